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
    costs.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="comma-separated running batch sizes")
    costs.add_argument("--widths", default="1,2,4,8,16", help="comma-separated tokens per sequence (verify width)")
    costs.add_argument("--context", type=int, default=256, help="KV cache length per sequence")
    costs.add_argument("--repeats", type=int, default=5, help="timed repeats per cell (median reported)")
    costs.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    costs.add_argument("--dtype", default="float32", help="float32, bfloat16, float64")
    costs.add_argument("--json", dest="json_out", help="also write the table as JSON to this file ('-' = stdout only)")
    costs.set_defaults(func=run_costs)


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
    try:
        dtype = resolve_dtype(args.dtype)
        if args.model:
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
