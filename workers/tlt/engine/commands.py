"""The engine's benchmarks: `tlt bench costs`, `tlt bench engine`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tlt.cli import add_bench_command


def register(subparsers) -> None:
    costs = add_bench_command(subparsers, "costs",
                              "target forward time per running batch size and verify width, and "
                              "drafter cost relative to the target (input of batchThreshold: auto)")
    costs.add_argument("--model", help="Hugging Face model folder (default: the built-in tiny model)")
    costs.add_argument("--shape", help="instead of --model: a named model shape with random weights built on the "
                       "device (no download), e.g. qwen2.5-7b; see `tlt bench engine --help`")
    costs.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="comma-separated running batch sizes")
    costs.add_argument("--widths", default="1,2,4,8,16", help="comma-separated tokens per sequence (verify width)")
    costs.add_argument("--context", type=int, default=256, help="KV cache length per sequence")
    costs.add_argument("--repeats", type=int, default=5, help="timed repeats per cell (median reported)")
    costs.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    costs.add_argument("--dtype", default="float32", help="float32, bfloat16, float64")
    costs.add_argument("--json", dest="json_out", help="also write the table as JSON to this file ('-' = stdout only)")
    costs.set_defaults(func=run_costs)

    from tlt.models.shapes import SHAPES

    eng = add_bench_command(subparsers, "engine",
                            "the torch engine at a real model shape with random weights: ms per plain step, "
                            "tokens/s and fraction of the HBM roofline per running batch, speculative round "
                            "time per strategy, host syncs per step, peak memory (final JSON line)")
    eng.add_argument("--shape", default=None, help=f"model shape: {', '.join(SHAPES)} (default: qwen2.5-7b on "
                     "CUDA, tiny on the CPU)")
    eng.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    eng.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA), float32 (default on the CPU), ...")
    eng.add_argument("--batch-sizes", default="1,4,16,64,256", help="running batch sizes of plain decoding")
    eng.add_argument("--prompt", type=int, default=512, help="prompt tokens per sequence (default %(default)s)")
    eng.add_argument("--steps", type=int, default=32, help="timed steps per cell (median reported)")
    eng.add_argument("--warmup", type=int, default=6, help="untimed steps first (they capture the CUDA graphs)")
    eng.add_argument("--strategies", default="4_1_4,3_2_6", help="speculative strategies to time ('' = none)")
    eng.add_argument("--spec-batch-sizes", default="1,4", help="running batch sizes of the speculative rounds")
    eng.add_argument("--bandwidth", type=float, help="device memory bandwidth in GB/s (default: a table of "
                     "known GPUs by name)")
    eng.add_argument("--eager", action="store_true", help="the dynamic-shape path without CUDA graphs "
                     "(static=False), to compare")
    eng.add_argument("--json", dest="json_out", help="also write the JSON to this file")
    eng.set_defaults(func=run_engine)


def _int_list(text: str, name: str) -> list[int]:
    from tlt.cli import CommandError
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"{name} must be comma-separated integers, e.g. 1,2,4") from None
    if not values or min(values) < 1:
        raise CommandError(f"{name} needs at least one integer >= 1")
    return sorted(set(values))


def run_costs(args) -> int:
    import torch

    from tlt.cli import CommandError
    from tlt.models import ConfigError, load_model, resolve_dtype
    from tlt.models.resolve import load_named

    from .costs import format_table, measure_costs

    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
    widths = _int_list(args.widths, "--widths")
    if 1 not in widths:
        widths = [1] + widths  # plain decoding is the baseline every ratio needs
    if args.context < 1 or args.repeats < 1:
        raise CommandError("--context and --repeats must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError("--device cuda requested but CUDA is not available; use --device cpu")
    if args.model and args.shape:
        raise CommandError("give --model or --shape, not both")
    try:
        dtype = resolve_dtype(args.dtype)
        if args.shape:
            from tlt.models.shapes import random_on_device, shape_config
            model, name = random_on_device(shape_config(args.shape), args.device, dtype), f"{args.shape} (random)"
        elif args.model:
            model, name = load_model(args.model, dtype=dtype, device=args.device), args.model
        else:
            folder, model = load_named(dtype=dtype)
            name = str(folder)
            model = model.to(args.device)
    except ConfigError as err:
        raise CommandError(str(err)) from None
    table = measure_costs(model, batch_sizes=batch_sizes, widths=widths, context_len=args.context,
                          repeats=args.repeats, progress=True, model_name=name)
    print(format_table(table))
    data = table.to_json()
    if args.json_out and args.json_out != "-":
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    print(json.dumps(data))
    return 0


def run_engine(args) -> int:
    import torch

    from tlt.cli import CommandError
    from tlt.models import ConfigError
    from tlt.speculative.adaptive import Strategy

    from .bench import run_engine_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError("--device cuda requested but CUDA is not available; use --device cpu")
    on_gpu = device.startswith("cuda")
    shape = args.shape or ("qwen2.5-7b" if on_gpu else "tiny")
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    strategies = [s for s in args.strategies.split(",") if s.strip()]
    try:
        for s in strategies:
            Strategy.parse(s)
    except ValueError as err:
        raise CommandError(f"--strategies: {err}") from None
    if args.prompt < 1 or args.steps < 1 or args.warmup < 0:
        raise CommandError("--prompt and --steps must be >= 1, --warmup >= 0")
    try:
        out = run_engine_bench(shape, device, dtype, _int_list(args.batch_sizes, "--batch-sizes"), args.prompt,
                               args.steps, args.warmup, strategies, _int_list(args.spec_batch_sizes, "--spec-batch-sizes"),
                               args.bandwidth * 1e9 if args.bandwidth else None, static=False if args.eager else None)
    except ConfigError as err:
        raise CommandError(str(err)) from None
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    print(json.dumps(out))
    return 0
