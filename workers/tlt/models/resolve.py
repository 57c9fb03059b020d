"""Where a model comes from: the one place that turns a model's name into its folder.

A model is named by a job's `spec.model` (a built-in base model, a folder, or a hub id)
or, on the command line and in benchmarks, by a folder or a built-in name such as
`tiny-arith`. Built-in models ship trained or are bootstrapped, once, into the cache (`tlt.tasks.bootstrap`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError

BUILTIN = "tiny-arith"  # the built-in base model commands default to


def resolve_model(model, *, progress: bool = True, download: bool = False) -> Path:
    """The Hugging Face folder of `model`: a job's `spec.model`, or a folder / built-in name.

    `download`: fetch `spec.model.hubId` into the Hugging Face cache (cluster pods do;
    the token comes from the pod's HF_TOKEN, a Secret reference, never from the spec).
    """
    if isinstance(model, (str, Path)):
        folder = Path(model)
        if (folder / "config.json").is_file():
            return folder
        from tlt.tasks.bootstrap import RECIPES

        if str(model) not in RECIPES:
            raise ConfigError(f"{model} is neither a model folder (with config.json) nor a built-in base model "
                              f"({', '.join(sorted(RECIPES))})")
        return _builtin(str(model), progress)
    if model.builtin:
        return _builtin(model.builtin, progress)
    if model.path:
        folder = Path(model.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"spec.model.path: {folder} holds no config.json; point it at a Hugging Face model folder")
        return folder
    if model.hub_id and download:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model.hub_id, revision=model.revision, token=os.environ.get("HF_TOKEN")))
    raise ValueError(
        "spec.model.hubId: the embedded runner reads models from disk; download the model and set spec.model.path"
    )


def _builtin(name: str, progress: bool) -> Path:
    from tlt.tasks.bootstrap import ensure_base_model

    return Path(ensure_base_model(name, progress=progress))


def load_named(model: str | Path = BUILTIN, dtype="float32", device="cpu", progress: bool = True):
    """(folder, CausalLM) of a folder or a built-in base model name."""
    from .loading import load_model

    folder = resolve_model(model, progress=progress)
    return folder, load_model(folder, dtype=dtype, device=device)
