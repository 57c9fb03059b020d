"""Build the decoder from a Hugging Face folder (config.json + safetensors) or a config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ConfigError, ModelConfig
from .llama import CausalLM

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found; point the model path at a Hugging Face model folder")
    return ModelConfig.from_hf_dict(json.loads(path.read_text()))


def read_safetensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: one `model.safetensors` or the shards named by its index."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors in {folder}; convert the checkpoint to safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def random_model(config: ModelConfig, seed: int = 0, dtype: str | torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", init_std: float = 0.02) -> CausalLM:
    """A model with seeded random weights (normal(0, init_std), norms at 1)."""
    gen = torch.Generator().manual_seed(seed)
    model = CausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * init_std)
    return model.to(device=device, dtype=resolve_dtype(dtype)).eval()


def load_model(folder: str | Path, dtype: str | torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> CausalLM:
    config = read_config(folder)
    with torch.device("meta"):
        model = CausalLM(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    state = read_safetensors(folder)
    load_weights(model, state, strict=True)
    return model.to(device=device, dtype=resolve_dtype(dtype)).eval()


def load_weights(model: CausalLM, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy `state` into the model in place (also the policy weight update path)."""
    params = dict(model.named_parameters())
    if model.config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    unknown = [k for k in state if k not in params and not k.endswith("rotary_emb.inv_freq")]
    if unknown and strict:
        raise ConfigError(f"checkpoint has weights the model does not: {unknown[:5]} ...")
    missing = [k for k in params if k not in state]
    if missing and strict:
        raise ConfigError(f"checkpoint lacks weights: {missing[:5]} ...; is the folder complete?")
    with torch.no_grad():
        for name, value in state.items():
            if name in params:
                p = params[name]
                if p.shape != value.shape:
                    raise ConfigError(f"weight {name} has shape {tuple(value.shape)}, model expects {tuple(p.shape)}")
                p.copy_(value.to(device=p.device, dtype=p.dtype))


def save_model(model: CausalLM, folder: str | Path, dtype: str | torch.dtype | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out_dtype = resolve_dtype(dtype) if dtype is not None else model.dtype
    state = {k: v.detach().to("cpu", out_dtype).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(out_dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder
