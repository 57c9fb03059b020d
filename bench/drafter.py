"""Drafter benchmark: acceptance length against drafter training steps, and drift.

1. The target samples responses to train prompts of the built-in task (temperature 1).
2. A drafter trains from scratch on them; at each evaluation point its mean
   acceptance length (chain of --chain, temperature 1.0, lossless speculative
   sampling) is measured on held-out prompts, next to the n-gram drafter's on the
   same prompts (the ratio is eagle / n-gram).
3. Drift: the policy is updated (a few steps of fine-tuning on its own correct
   responses, as a reward-filtered RL step would), the drafter's acceptance on the
   new policy is measured, then the drafter trains on the new policy's rollouts
   (the buffer keeps the current and previous step) until it gets back to the
   acceptance it had before the update; the steps that took are reported.

    .venv/bin/python bench/drafter.py [--model tiny-arith] [--steps 600] [--threads 2]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch


def policy_update(target, samples, task, tokenizer, steps: int, lr: float, seed: int):
    """A new policy: `steps` AdamW steps of cross-entropy on the target's own correct responses."""
    new = copy.deepcopy(target)
    for p in new.parameters():
        p.requires_grad_(True)
    new.train()
    good = []
    for s in samples:
        prompt = tokenizer.decode(list(s.tokens[:s.prompt_len]), skip_special_tokens=True)
        resp = tokenizer.decode(list(s.tokens[s.prompt_len:]), skip_special_tokens=True)
        from tlt.tasks.arith import parse_prompt, render_trace
        try:
            answer = render_trace(*parse_prompt(prompt)).rsplit("=", 1)[1]
        except ValueError:
            continue
        if task.verify(prompt, resp, answer) > 0:
            good.append(s)
    good = good or list(samples)
    opt = torch.optim.AdamW([p for p in new.parameters()], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(good), generator=gen)[:16].tolist()
        batch = [good[i] for i in idx]
        width = max(len(s.tokens) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, s in enumerate(batch):
            ids[r, :len(s.tokens)] = torch.tensor(s.tokens)
            mask[r, s.prompt_len:len(s.tokens)] = True
        logits = new(ids)
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(lp * mask[:, 1:]).sum() / mask[:, 1:].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(new.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for p in new.parameters():
        p.requires_grad_(False)
    return new.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-arith")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--heldout", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-at", default="0,50,100,200,400,600")
    ap.add_argument("--chain", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--policy-steps", type=int, default=30, help="fine-tuning steps of the policy update")
    ap.add_argument("--policy-lr", type=float, default=1e-3)
    ap.add_argument("--recover-every", type=int, default=25)
    ap.add_argument("--recover-max", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tlt.drafter import RolloutBuffer, SpotTrainer, TrainConfig
    from tlt.drafter.measure import mean_acceptance
    from tlt.drafter.packing import training_batches
    from tlt.drafter.warmup import generate_samples, task_prompts, tokenizer_for
    from tlt.models.resolve import load_named
    from tlt.models.drafter import EagleDrafter
    from tlt.speculative.ngram import NgramDrafter
    from tlt.tasks import get_task

    started = time.perf_counter()
    folder, target = load_named(args.model)
    tok = tokenizer_for(folder)
    eos = [tok.eos_token_id]
    task = get_task("arith", max_response_tokens=args.max_tokens)
    opts = {"max_response_tokens": args.max_tokens}
    train_prompts = task_prompts("arith", args.prompts, args.seed, tok, task_options=opts)
    held = task_prompts("arith", args.heldout, args.seed + 1, tok, split="heldout", task_options=opts)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    def acceptance(model, drafter_or_ngram, seed=0):
        return mean_acceptance(model, drafter_or_ngram, held, args.max_tokens, steps=args.chain,
                               temperature=args.temperature, stop_ids=eos, batch_size=16,
                               seed=args.seed * 7 + seed).acceptance_length

    log(f"generating {len(train_prompts)} rollouts of the target")
    samples = generate_samples(target, train_prompts, args.max_tokens, args.temperature, eos, args.seed)
    buffer = RolloutBuffer(capacity=4 * args.prompts, keep_steps=2)
    buffer.extend(samples, step=0)
    batches = training_batches(target, buffer.samples())
    ngram0 = acceptance(target, NgramDrafter())
    drafter = EagleDrafter.for_target(target, seed=args.seed)
    trainer = SpotTrainer(drafter, TrainConfig(lr=args.lr, warmup_steps=30, checkpoint_every=0, seed=args.seed))
    trainer.set_data(batches)
    curve = []
    points = sorted({int(x) for x in args.eval_at.split(",")} | {args.steps})
    for point in points:
        if point > args.steps:
            break
        trainer.run(until_step=point)
        drafter.eval()
        acc = acceptance(target, drafter)
        curve.append({"step": point, "loss": trainer.mean_loss(), "acceptance": acc,
                      "tokens_trained": trainer.state.tokens})
        log(f"step {point:5d}  loss {trainer.mean_loss() or float('nan'):.4f}  acceptance {acc:.3f}  "
            f"(n-gram {ngram0:.3f})")
    before = curve[-1]["acceptance"]

    # ---- drift: a policy update, then recovery on the new policy's rollouts
    log("policy update")
    new_policy = policy_update(target, samples, task, tok, args.policy_steps, args.policy_lr, args.seed)
    drafter.attach(new_policy)  # the engine's drafter shares the (updated) target's embedding and head
    drifted = acceptance(new_policy, drafter)
    ngram1 = acceptance(new_policy, NgramDrafter())
    log(f"after policy update: acceptance {drifted:.3f} (before {before:.3f}); n-gram {ngram1:.3f}")
    new_samples = generate_samples(new_policy, train_prompts, args.max_tokens, args.temperature, eos,
                                   args.seed + 1)
    buffer.extend(new_samples, step=1)
    trainer2 = SpotTrainer(drafter, trainer.config)  # the new policy is frozen and shared, like the old
    trainer2.optimizer.load_state_dict(trainer.optimizer.state_dict())
    trainer2.config.warmup_steps = 0
    trainer2.set_data(training_batches(new_policy, buffer.samples()))
    recover_steps = None
    recovery = [{"step": 0, "acceptance": drifted}]
    goal = 0.98 * before
    if drifted >= goal:
        recover_steps = 0
    while recover_steps is None and trainer2.state.step < args.recover_max:
        trainer2.run(max_steps=args.recover_every)
        drafter.eval()
        acc = acceptance(new_policy, drafter)
        recovery.append({"step": trainer2.state.step, "acceptance": acc})
        log(f"recovery step {trainer2.state.step:4d}  acceptance {acc:.3f}")
        if acc >= goal:
            recover_steps = trainer2.state.step

    print(f"{'drafter step':>12} {'loss':>8} {'accept len':>10} {'vs n-gram':>9}")
    for row in curve:
        loss = row["loss"] if row["loss"] is not None else float("nan")
        print(f"{row['step']:>12} {loss:8.4f} {row['acceptance']:10.3f} {row['acceptance'] / ngram0:9.3f}")
    print(f"n-gram drafter acceptance: {ngram0:.3f}")
    print(f"policy update: acceptance {before:.3f} -> {drifted:.3f}; recovered to >= {goal:.3f} "
          f"after {recover_steps if recover_steps is not None else f'> {args.recover_max}'} drafter steps")
    result = {
        "bench": "drafter", "model": str(folder), "chain": args.chain, "temperature": args.temperature,
        "threads": torch.get_num_threads(), "heldout_prompts": len(held),
        "curve": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in curve],
        "ngram_acceptance": round(ngram0, 3),
        "final_acceptance": round(before, 3),
        "ratio_to_ngram": round(before / ngram0, 3) if ngram0 else None,
        "drift": {"before": round(before, 3), "after_policy_update": round(drifted, 3),
                  "ngram_after_update": round(ngram1, 3), "recover_goal": round(goal, 3),
                  "steps_to_recover": recover_steps,
                  "recovery": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                               for r in recovery]},
        "goal_acceptance_ge_3": before >= 3.0, "beats_ngram": before > ngram0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
