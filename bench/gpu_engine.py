"""The torch engine at a real model shape on this machine's device (same as `tlt bench engine`),
or, with --all, every GPU check of issue 15's "Done when" in one run, written to one JSON file.

    PYTHONPATH=workers python bench/gpu_engine.py [--shape qwen2.5-7b] [--batch-sizes 1,4,16,64,256] ...
    PYTHONPATH=workers python bench/gpu_engine.py --all --out gpu-check.json \\
        [--tiny-model DIR --tiny-drafter DIR] [--shape qwen2.5-7b] [--quick]

--all needs only torch (and transformers for the tiny model's tokenizer): no Ray, no vLLM.
Parts, each saved into --out as soon as it ends (a timeout keeps what finished):
  env        torch, CUDA and device facts
  identity   static shapes + CUDA graphs vs the dynamic path: token-identical outputs, greedy
             and sampled, plain and speculative (chain, tree), in float64 (exact) and float32
  engine     `tlt bench engine` at --shape: ms per plain step, tokens/s and fraction of the HBM
             roofline at running batch 1..256, speculative round time per strategy, host syncs
             per step, peak memory; with the dynamic path (no graphs) at batch 1 and 64 beside it
  tiny       the rollout benchmark (`tlt bench rollout` logic) with the built-in tiny model and
             a warmed-up drafter (--tiny-model, --tiny-drafter): plain vs speculation at running
             batch 1 and over the long tail, greedy and at temperature 1, outputs compared
  costs      the cost table at --shape (CUDA-synchronised, graph-replayed forwards), also written
             to <out>.costs.json for `tlt simulate --gpus 64 --costs <out>.costs.json`
  checks     each "Done when" figure beside its target
On a CPU, `--all --quick --shape tiny` runs the same code small (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch


def _identity(device: str, quick: bool) -> dict:
    """Outputs of the static path (CUDA graphs on a GPU) equal the dynamic path's."""
    from tlt.engine import Request, TorchEngine
    from tlt.models.drafter import EagleDrafter
    from tlt.models.shapes import random_on_device, shape_config
    from tlt.speculative.adaptive import FixedStrategy, Strategy

    out = {}
    for dtype in ("float64", "float32"):
        model = random_on_device(shape_config("tiny"), device, dtype, seed=3, init_std=0.2)
        drafter = EagleDrafter.for_target(model, seed=4)
        gen = torch.Generator().manual_seed(5)
        prompts = [torch.randint(3, 200, (int(n),), generator=gen).tolist()
                   for n in torch.randint(4, 40, (6 if quick else 40,), generator=gen)]
        longest = 12 if quick else 48
        for temperature in (0.0, 1.0):
            for strategy in (None, "4_1_4", "3_2_6"):
                def run(static):
                    engine = TorchEngine(model, num_slots=4 if quick else 24, max_model_len=128,
                                         drafter=drafter if strategy else None, static=static,
                                         speculation=FixedStrategy(Strategy.parse(strategy)) if strategy else None)
                    reqs = [Request(prompt=p, max_tokens=4 + (i * 7) % longest, stop_ids=[2], temperature=temperature,
                                    seed=i, id=i) for i, p in enumerate(prompts)]
                    res = engine.generate(reqs)
                    return [r.tokens for r in res], engine.cuda_graphs, len(engine._graphs or ())

                ref, _, _ = run(False)
                got, graphs, captured = run(True)
                key = f"{dtype} t={temperature} {strategy or 'plain'}"
                out[key] = {"differing_sequences": sum(a != b for a, b in zip(ref, got)), "sequences": len(ref),
                            "cuda_graphs": graphs, "graphs_captured": captured}
    return out


def _tiny(args) -> dict:
    from tlt.drafter.rollout_bench import BenchConfig, run_bench
    from tlt.drafter.warmup import tokenizer_for
    from tlt.models import load_model
    from tlt.models.drafter import EagleDrafter

    if not (args.tiny_model and args.tiny_drafter):
        return {"skipped": "give --tiny-model and --tiny-drafter (tiny-arith and a `tlt drafter warmup` folder)"}
    target = load_model(args.tiny_model, dtype="float32", device=args.device)
    drafter = EagleDrafter.load(args.tiny_drafter, target)
    tok = tokenizer_for(Path(args.tiny_model))
    out = {}
    for temperature in (0.0, 1.0):
        cfg = BenchConfig(batch_sizes=(1,) if args.quick else (1, 4, 16, 64), repeats=1 if args.quick else 3,
                          requests=8 if args.quick else 64, max_tokens=64 if args.quick else 512,
                          tokens=24 if args.quick else 160, temperature=temperature,
                          threshold=4 if args.quick else None)
        start = time.time()
        summary = run_bench(target, drafter, tok, cfg, progress=False)
        summary["wall_s"] = round(time.time() - start, 1)
        out[f"t={temperature}"] = summary
    return out


def _checks(res: dict) -> dict:
    """Issue 15's GPU figures beside their targets (None where the part did not run)."""
    eng = res.get("engine") or {}
    plain = eng.get("plain", {})
    spec = eng.get("speculative", {}).get("4_1_4", {})
    tiny = res.get("tiny") or {}
    identity = res.get("identity") or {}

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    b1 = get(plain, "1", "ms_per_step")
    rows = [
        ("plain decode ms per token at batch 1", b1, "<= 6.5", b1 is not None and b1 <= 6.5),
        ("fraction of the HBM roofline at batch 1", get(plain, "1", "fraction_of_roofline"), ">= 0.5",
         (get(plain, "1", "fraction_of_roofline") or 0) >= 0.5),
        ("tokens/s at batch 64", get(plain, "64", "tokens_per_s"), ">= 5000",
         (get(plain, "64", "tokens_per_s") or 0) >= 5000),
        ("4_1_4 round / plain step at batch 1", get(spec, "1", "round_over_plain_step"), "<= 1.5",
         (get(spec, "1", "round_over_plain_step") or 99) <= 1.5),
        ("host syncs per plain step (batch 1)", get(plain, "1", "host_syncs_per_step"), "<= 1",
         get(plain, "1", "host_syncs_per_step") is not None and get(plain, "1", "host_syncs_per_step") <= 1),
        ("host syncs per 4_1_4 round (batch 1)", get(spec, "1", "host_syncs_per_round"), "<= 2",
         get(spec, "1", "host_syncs_per_round") is not None and get(spec, "1", "host_syncs_per_round") <= 2),
    ]
    for t in ("t=0.0", "t=1.0"):
        ratio = get(tiny, t, "batch", "1", "always")
        rows.append((f"tiny model + warmed drafter, speculation at batch 1 ({t})", ratio, ">= 2.0",
                     (ratio or 0) >= 2.0))
        same = get(tiny, t, "outputs_identical")
        rows.append((f"tiny model outputs identical to plain decoding ({t})", same, "true", same is True))
    exact = [v["differing_sequences"] for k, v in identity.items() if k.startswith("float64")]
    rows.append(("static/graph path = dynamic path, float64 (differing sequences)",
                 sum(exact) if exact else None, "0", bool(exact) and sum(exact) == 0))
    return {name: {"value": value, "target": target, "pass": ok} for name, value, target, ok in rows}


def run_all(args) -> int:
    from tlt.engine.bench import run_engine_bench

    out_path = Path(args.out)
    res: dict = {"bench": "gpu_check", "args": vars(args), "errors": {}}

    def save():
        res["checks"] = _checks(res)
        out_path.write_text(json.dumps(res, indent=1, default=str) + "\n")

    def part(name, fn):
        start = time.time()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            res[name] = fn()
        except Exception:  # keep going: one JSON with what worked and each failure's traceback
            res["errors"][name] = traceback.format_exc()
            print(res["errors"][name], file=sys.stderr, flush=True)
        res.setdefault("seconds", {})[name] = round(time.time() - start, 1)
        save()

    cuda = args.device.startswith("cuda")
    part("env", lambda: {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
                         "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                         "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda
                         else None, "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled() if cuda else None})
    part("identity", lambda: _identity(args.device, args.quick))
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    sizes = (1, 4) if args.quick else (1, 4, 16, 64, 256)
    part("engine", lambda: run_engine_bench(args.shape, args.device, dtype, sizes, args.prompt,
                                            4 if args.quick else 32, 2 if args.quick else 6,
                                            ("4_1_4", "3_2_6"), (1,) if args.quick else (1, 4, 16),
                                            args.bandwidth * 1e9 if args.bandwidth else None))
    part("engine_dynamic", lambda: run_engine_bench(args.shape, args.device, dtype, (1,) if args.quick else (1, 64),
                                                    args.prompt, 4 if args.quick else 16, 2, ("4_1_4",), (1,),
                                                    args.bandwidth * 1e9 if args.bandwidth else None, static=False))
    part("tiny", lambda: _tiny(args))

    def costs():
        from tlt.engine.costs import format_table, measure_costs
        from tlt.models.shapes import random_on_device, shape_config

        model = random_on_device(shape_config(args.shape), args.device, dtype)
        table = measure_costs(model, batch_sizes=(1, 2) if args.quick else (1, 2, 4, 8, 16, 32, 64),
                              widths=(1, 2, 4, 5, 8, 16), context_len=64 if args.quick else 1024,
                              repeats=2 if args.quick else 7, progress=False,
                              model_name=f"{args.shape} random {dtype}")
        data = table.to_json()
        Path(f"{out_path}.costs.json").write_text(json.dumps(data, indent=1) + "\n")
        print(format_table(table), file=sys.stderr)
        return data

    part("costs", costs)
    failed = [k for k, v in res["checks"].items() if not v["pass"]]
    print(json.dumps({"checks": res["checks"], "errors": list(res["errors"])}), flush=True)
    print(f"wrote {out_path}; {len(res['checks']) - len(failed)}/{len(res['checks'])} checks pass", file=sys.stderr)
    return 1 if res["errors"] else 0


def main(argv=None) -> int:
    if "--all" not in (argv if argv is not None else sys.argv[1:]):
        from tlt.cli import main as tlt_main
        return tlt_main(["bench", "engine", *(argv if argv is not None else sys.argv[1:])])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--out", default="gpu-check.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="qwen2.5-7b")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--bandwidth", type=float, help="GB/s (default: the table of known GPUs)")
    ap.add_argument("--tiny-model", help="the built-in tiny-arith model folder (~/.cache/tlt/models/tiny-arith-*)")
    ap.add_argument("--tiny-drafter", help="a warmed-up drafter folder for it (~/.cache/tlt/drafters/tiny-arith-*)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of this script")
    return run_all(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
