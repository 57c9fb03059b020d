"""What tlt asks of vLLM for a rollout shard, from the job's spec (pure; no torch, no vLLM).

The simulator reads `draft_depth` to model `rollout.engine: vllm` as the engine runs it.
"""

from __future__ import annotations

from pathlib import Path

EXTENSION = "tlt.engine.vllm_backend.WorkerExtension"


def draft_depth(spec) -> int:
    """Draft tokens per vLLM step: vLLM drafts one EAGLE chain, as deep as the first strategy."""
    return int(spec.speculative.strategies[0].split("_")[0])


def speculative_config(spec, drafter_dir: str | Path | None, threshold: int | None) -> dict | None:
    """The `speculative_config` argument for `vllm.LLM` from the job's spec (None: no speculation).

    `threshold`: the resolved `speculative.batchThreshold`; in `adaptive` mode vLLM drafts
    only while a step schedules at most this many sequences.
    """
    s, drafter = spec.speculative, spec.drafter
    if s.mode == "off" or not drafter.enabled:
        return None
    steps = draft_depth(spec)
    if drafter.architecture == "ngram":
        config = {"method": "ngram", "num_speculative_tokens": steps, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    else:
        if drafter_dir is None or not (Path(drafter_dir) / "config.json").is_file():
            raise ValueError(f"{drafter_dir} is not a drafter folder (config.json missing); export one with EagleDrafter.save")
        config = {"method": "eagle", "model": str(drafter_dir), "num_speculative_tokens": steps}
    largest = spec.rollout.max_batch_size
    if s.mode == "adaptive" and threshold is not None and threshold < largest:
        config["num_speculative_tokens_per_batch_size"] = [[1, int(threshold), steps], [int(threshold) + 1, largest, 0]]
    return config


def llm_kwargs(spec, model_dir: str | Path, *, drafter_dir: str | Path | None, threshold: int | None,
               max_model_len: int) -> dict:
    """Every argument tlt gives `vllm.LLM` for one rollout shard of `spec`."""
    r = spec.rollout
    dtype = spec.model.dtype if spec.model.dtype != "auto" else "bfloat16"
    kwargs = {
        "model": str(model_dir),
        "dtype": dtype,
        "seed": spec.algorithm.seed,
        "max_model_len": int(max_model_len),
        "max_num_seqs": r.max_batch_size,
        "gpu_memory_utilization": r.gpu_memory_utilization,
        "tensor_parallel_size": max(1, r.gpus_per_replica),
        "enable_sleep_mode": True,
        "worker_extension_cls": EXTENSION,
        "skip_tokenizer_init": True,  # tlt sends token ids and reads token ids
        "disable_log_stats": False,  # acceptance counters come from get_metrics()
        # temperature-scaled log-probs, as the trainer computes them (equal at topP 1; see VLLM.md)
        "logprobs_mode": "processed_logprobs",
        "speculative_config": speculative_config(spec, drafter_dir, threshold),
    }
    if r.gpus_per_replica > 1:
        kwargs["distributed_executor_backend"] = "mp"  # the tensor-parallel workers stay in the shard's pod
    return kwargs
