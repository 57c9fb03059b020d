"""PolicyTrainer on tiny random Llama/Qwen2 folders: updates, backends, resume, export."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from tlt.api.model import AlgorithmSpec
from tlt.tasks.tokenizer import save_tokenizer
from tlt.trainer import AGGREGATIONS, PolicyTrainer, Rollouts, TrainerConfig

TINY = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def _save(folder: Path, family: str) -> Path:
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**TINY, tie_word_embeddings=True))
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("qwen2"), "qwen2")


def _batch(advantages=(1.0, -1.0, 0.5, -0.5), old_logprobs=None) -> Rollouts:
    prompts = [[1, 5, 9], [1, 5, 9], [1, 7], [1, 7]]
    responses = [[11, 12, 13, 14], [21, 22], [31, 32, 33], [41]]
    return Rollouts(prompts, responses, list(advantages), old_logprobs=old_logprobs)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _l2(a: dict, b: dict) -> float:
    return sum(((a[k] - b[k]) ** 2).sum().item() for k in a) ** 0.5


def _relative_gap(a: dict, b: dict, start: dict) -> float:
    """||a - b|| / ||a - start|| over all weights: how far two runs differ, relative to how far they moved.

    Adam divides by the gradient's own magnitude, so entries whose gradient is
    floating-point noise move by noise-sized-but-amplified amounts; measuring the
    whole update in L2 keeps those few entries from dominating. A lost micro-batch
    or a different clip gives a gap of order 0.1-1; summation order gives ~1e-5.
    """
    assert a.keys() == b.keys() == start.keys()
    return _l2(a, b) / _l2(a, start)


def test_one_update_raises_the_logprob_of_a_positively_advantaged_response(llama):
    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-3), device="cpu")
    batch = _batch()
    before = [lp.sum().item() for lp in trainer.compute_logprobs(batch)]
    trainer.train(batch)
    after = [lp.sum().item() for lp in trainer.compute_logprobs(batch)]
    assert after[0] > before[0] and after[2] > before[2]  # advantages +1, +0.5
    assert after[1] < before[1] and after[3] < before[3]  # advantages -1, -0.5


def test_batched_logprobs_equal_those_of_each_rollout_alone(llama):
    # long prompts and ragged responses: padding and the trimmed LM head must not change anything
    trainer = PolicyTrainer(llama, TrainerConfig(temperature=0.7), device="cpu")
    prompts = [list(range(1, 11)), list(range(20, 32)), [3, 4]]
    responses = [[50], [51, 52, 53, 54, 55], [60, 61]]
    together = trainer.compute_logprobs(Rollouts(prompts, responses, [0.0, 0.0, 0.0]))
    for p, r, lp in zip(prompts, responses, together):
        alone = trainer.compute_logprobs(Rollouts([p], [r], [0.0]))[0]
        assert lp.shape == (len(r),) and torch.allclose(lp, alone, atol=1e-5)
    # and they are the log-softmax of logits / temperature where the 12-token prompt ends (11..15)
    with torch.no_grad():
        logits = trainer.module(input_ids=torch.tensor([prompts[1] + responses[1]])).logits[0]
    expected = torch.log_softmax(logits[11:16] / 0.7, dim=-1).gather(-1, torch.tensor(responses[1])[:, None])[:, 0]
    assert torch.allclose(together[1], expected, atol=1e-5)


def test_first_update_on_recomputed_logprobs_has_ratio_one_and_loss_minus_mean_advantage(llama):
    # Old log-probs recomputed by the trainer itself: ratio 1 everywhere, so nothing is
    # clipped and each token's loss is -A; seq-mean-token-mean is then -mean(A).
    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-3), device="cpu")
    m = trainer.train(_batch(advantages=(1.0, 0.25, 0.5, 0.25)))
    assert m["ppo_kl"] == 0.0 and m["clip_fraction"] == 0.0
    assert m["loss"] == pytest.approx(-0.5, abs=1e-6)
    assert m["tokens"] == 10 and m["updates"] == 1 and m["grad_norm"] > 0


def test_stale_old_logprobs_are_clipped_and_counted(llama):
    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-3, clip_ratio_high=0.28), device="cpu")
    batch = _batch()
    current = trainer.compute_logprobs(batch)
    # The rollout saw every token with a much lower probability: ratio e^1 > 1.28 on all tokens,
    # so the tokens of the positively advantaged sequences (4 + 3 of 10) are clipped.
    stale = _batch(old_logprobs=[lp - 1.0 for lp in current])
    m = trainer.train(stale)
    assert m["clip_fraction"] == pytest.approx(7 / 10)
    assert m["ppo_kl"] == pytest.approx(-1.0, abs=1e-5)


@pytest.mark.parametrize("split", [{"micro_batch_size": 1}, {"micro_batch_tokens": 10}])
def test_micro_batches_give_the_same_update_as_one_forward_per_mini_batch(llama, split):
    cfg = dict(learning_rate=1e-2, mini_batch_size=4, ppo_epochs=2, loss_aggregation="token-mean")
    whole = PolicyTrainer(llama, TrainerConfig(**cfg), device="cpu")
    split = PolicyTrainer(llama, TrainerConfig(**cfg, **split), device="cpu")
    start = whole.state_dict()
    m_whole, m_split = whole.train(_batch()), split.train(_batch())
    assert m_split["loss"] == pytest.approx(m_whole["loss"], abs=1e-6)
    assert m_split["grad_norm"] == pytest.approx(m_whole["grad_norm"], rel=1e-5)
    assert _relative_gap(whole.state_dict(), split.state_dict(), start) <= 1e-4


def _ragged(trainer: PolicyTrainer) -> Rollouts:
    """Long-tailed lengths (1 to 40 response tokens, prompts of 1 to 12), a partly masked response, and old
    log-probs off by -1, 0 or +1 per token: ratios far from the clip bounds, so both branches are exercised
    and float rounding cannot flip a token between them."""
    g = torch.Generator().manual_seed(3)
    lengths = [(3, 40), (1, 1), (12, 5), (2, 23), (7, 2), (5, 31), (1, 9), (9, 3)]
    prompts = [torch.randint(3, 100, (p,), generator=g).tolist() for p, _ in lengths]
    responses = [torch.randint(3, 100, (r,), generator=g).tolist() for _, r in lengths]
    masks = [[float(j % 3 != 1) if i == 0 else 1.0 for j in range(len(r))] for i, r in enumerate(responses)]
    plain = Rollouts(prompts, responses, [0.0] * len(lengths))
    old = [lp + torch.randint(-1, 2, lp.shape, generator=g).float() for lp in trainer.compute_logprobs(plain)]
    return Rollouts(prompts, responses, [1.0, -0.5, 0.3, -1.2, 0.8, 0.1, -0.7, 0.4], old_logprobs=old,
                    response_masks=masks)


def _with_gradients(trainer: PolicyTrainer) -> list[dict]:
    """Records the gradients of every optimizer step (before clipping) into the returned list."""
    seen, step = [], trainer.backend.step

    def recording():
        seen.append({n: p.grad.detach().clone() for n, p in trainer.module.named_parameters() if p.grad is not None})
        return step()

    trainer.backend.step = recording
    return seen


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_packed_micro_batches_give_the_loss_and_gradients_of_padded_ones(llama, aggregation):
    # Two optimizer steps of two micro-batches each, a KL term, a masked token: everything the loss adds up.
    cfg = dict(learning_rate=1e-2, loss_aggregation=aggregation, kl_coef=0.1, mini_batch_size=4, micro_batch_size=2)
    packed = PolicyTrainer(llama, TrainerConfig(**cfg), device="cpu")
    padded = PolicyTrainer(llama, TrainerConfig(**cfg, remove_padding=False), device="cpu")
    batch = _ragged(padded)
    grads_packed, grads_padded = _with_gradients(packed), _with_gradients(padded)
    for _ in range(2):  # the second step runs on moved weights, with a non-zero KL
        m_packed, m_padded = packed.train(batch), padded.train(batch)
        for key in ("loss", "pg_loss", "kl_loss", "kl", "ppo_kl", "entropy"):
            assert m_packed[key] == pytest.approx(m_padded[key], rel=1e-5, abs=1e-6), key
        assert m_packed["clip_fraction"] == m_padded["clip_fraction"] > 0
    assert m_packed["kl"] > 0
    assert len(grads_packed) == len(grads_padded) == 4
    for a, b in zip(grads_packed, grads_padded):
        assert a.keys() == b.keys()
        for name in a:
            scale = b[name].abs().max().item()
            assert (a[name] - b[name]).abs().max().item() <= 1e-4 * scale + 1e-7, name


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_rollouts_without_advantage_are_not_run_and_the_update_is_the_same(llama, aggregation):
    # A group that got one reward has advantage 0 for all its rollouts: without a KL term they add exactly 0
    # to the loss and gradient, so the trainer skips them. The update must be the one that ran them all,
    # including a step whose every rollout has advantage 0 (AdamW still steps on its momentum).
    cfg = dict(learning_rate=1e-2, loss_aggregation=aggregation, mini_batch_size=4, micro_batch_size=2)
    skipping = PolicyTrainer(llama, TrainerConfig(**cfg), device="cpu")
    running_all = PolicyTrainer(llama, TrainerConfig(**cfg), device="cpu")
    running_all._trained_rows = lambda rollouts, indices, world_size: indices
    start = skipping.state_dict()
    ragged = _ragged(running_all)

    def advantaged(values):
        return Rollouts(ragged.prompts, ragged.responses, values, old_logprobs=ragged.old_logprobs,
                        response_masks=ragged.response_masks)

    rows = {id(t): [] for t in (skipping, running_all)}
    for t in (skipping, running_all):
        t.module.register_forward_hook(lambda _m, args, kwargs, _out, key=id(t): rows[key].append(
            int(kwargs["position_ids"].eq(0).sum()) if kwargs.get("position_ids") is not None else 0),
            with_kwargs=True)
    grads_skip, grads_all = _with_gradients(skipping), _with_gradients(running_all)
    first = advantaged([0.0, -0.5, 0.3, 0.0, 0.8, 0.0, -0.7, 0.4])  # the longest (40, 31, 23 tokens) have none
    m_skip, m_all = skipping.train(first), running_all.train(first)
    assert m_skip["zero_advantage_fraction"] == pytest.approx(3 / 8) and m_all["zero_advantage_fraction"] == 0
    assert sum(rows[id(skipping)]) == 5 and sum(rows[id(running_all)]) == 8  # sequences run forward
    assert m_skip["loss"] == pytest.approx(m_all["loss"], rel=1e-5, abs=1e-7)
    m_skip, m_all = skipping.train(advantaged([0.0] * 8)), running_all.train(advantaged([0.0] * 8))
    assert m_skip["updates"] == m_all["updates"] == 2
    assert m_skip["zero_advantage_fraction"] == pytest.approx(6 / 8)  # one rollout per mini-batch still runs
    assert len(grads_skip) == len(grads_all) == 4
    for a, b in zip(grads_skip, grads_all):
        assert a.keys() == b.keys()
        for name in a:
            assert (a[name] - b[name]).abs().max().item() <= 1e-4 * b[name].abs().max().item() + 1e-7, name
    assert _relative_gap(skipping.state_dict(), running_all.state_dict(), start) <= 1e-4


def test_old_logprobs_from_the_rollout_are_not_recomputed(llama):
    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-3, mini_batch_size=2), device="cpu")
    forwards = []
    trainer.module.register_forward_hook(lambda *_: forwards.append(1))
    current = trainer.compute_logprobs(_batch())
    forwards.clear()
    trainer.train(_batch(old_logprobs=current))
    assert len(forwards) == 2  # one per optimizer step, none for old log-probs
    forwards.clear()
    trainer.train(_batch())
    assert len(forwards) == 3  # without them: one more, before the first update


def test_train_reports_trained_tokens_per_second(llama):
    import time

    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-3), device="cpu")
    started = time.perf_counter()
    m = trainer.train(_batch())
    elapsed = time.perf_counter() - started
    assert m["tokens"] == 10
    # tokens over the call's own time, which lies within what the caller measured
    assert m["tokens_per_second"] >= m["tokens"] / elapsed


def test_kl_to_the_frozen_reference_grows_as_the_policy_moves(llama):
    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-2, kl_coef=0.1), device="cpu")
    first = trainer.train(_batch())
    second = trainer.train(_batch())
    assert first["kl"] == 0.0  # the policy still equals the reference
    assert second["kl"] > 0.0
    assert second["loss"] == pytest.approx(second["pg_loss"] + 0.1 * second["kl_loss"], abs=1e-6)


@pytest.mark.parametrize("stage, micro", [(0, 1), (1, None), (2, 1), pytest.param(3, 1, marks=pytest.mark.slow)])
def test_deepspeed_zero_matches_the_torch_backend(llama, stage, micro):
    # Four optimizer steps (2 mini-batches x 2 epochs) so Adam's later, magnitude-dependent
    # updates are compared too; micro=1 accumulates gradients over two micro-batches.
    # fp32 on both sides: only summation order differs (tolerances in _relative_gap).
    cfg = TrainerConfig(learning_rate=1e-2, mini_batch_size=2, ppo_epochs=2, micro_batch_size=micro)
    ref = PolicyTrainer(llama, cfg, backend="torch", device="cpu")
    ds = PolicyTrainer(llama, cfg, backend="deepspeed", zero_stage=stage, device="cpu")
    start = ref.state_dict()
    m_ref, m_ds = ref.train(_batch()), ds.train(_batch())
    assert m_ds["loss"] == pytest.approx(m_ref["loss"], abs=1e-6)
    assert m_ds["grad_norm"] == pytest.approx(m_ref["grad_norm"], rel=1e-5)
    assert m_ds["clip_fraction"] == pytest.approx(m_ref["clip_fraction"])
    assert _relative_gap(ref.state_dict(), ds.state_dict(), start) <= 1e-4


@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_resuming_from_a_checkpoint_continues_exactly_like_an_uninterrupted_run(llama, tmp_path, backend):
    cfg = TrainerConfig(learning_rate=1e-2, mini_batch_size=2)
    kw = dict(backend=backend, zero_stage=2, device="cpu")
    straight = PolicyTrainer(llama, cfg, **kw)
    straight.train(_batch())
    straight.save_checkpoint(tmp_path / "ckpt")
    expected = straight.train(_batch(advantages=(0.5, 1.0, -1.0, 0.0)))

    resumed = PolicyTrainer(llama, cfg, **kw)
    resumed.load_checkpoint(tmp_path / "ckpt")
    got = resumed.train(_batch(advantages=(0.5, 1.0, -1.0, 0.0)))
    # Same weights, Adam moments and shuffling order: the next step is bit for bit the same.
    assert _max_diff(straight.state_dict(), resumed.state_dict()) == 0.0
    got.pop("tokens_per_second"), expected.pop("tokens_per_second")  # wall time
    assert got == expected
    assert (resumed.steps, resumed.updates) == (2, 4)


def test_saving_a_checkpoint_again_replaces_the_previous_one(llama, tmp_path):
    trainer = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-2), device="cpu")
    trainer.save_checkpoint(tmp_path / "ckpt")
    trainer.train(_batch())
    trainer.save_checkpoint(tmp_path / "ckpt")
    fresh = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-2), device="cpu")
    fresh.load_checkpoint(tmp_path / "ckpt")
    assert _max_diff(trainer.state_dict(), fresh.state_dict()) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left


def test_a_checkpoint_of_one_backend_is_refused_by_the_other(llama, tmp_path):
    PolicyTrainer(llama, device="cpu").save_checkpoint(tmp_path / "ckpt")
    other = PolicyTrainer(llama, backend="deepspeed", zero_stage=1, device="cpu")
    with pytest.raises(ValueError, match="torch backend"):
        other.load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_state_dict_has_the_keys_of_the_hugging_face_safetensors(family, llama, qwen2):
    folder = {"llama": llama, "qwen2": qwen2}[family]
    trainer = PolicyTrainer(folder, device="cpu")
    state = trainer.state_dict()
    on_disk = load_file(str(folder / "model.safetensors"))
    assert state.keys() == on_disk.keys()  # a tied LM head is left out, as on disk
    assert all(torch.equal(state[k], on_disk[k]) for k in state)


def test_state_dict_loads_into_the_rollout_engines_model_and_gives_the_trainers_logits(qwen2):
    from tlt.models import load_model, load_weights

    trainer = PolicyTrainer(qwen2, TrainerConfig(learning_rate=1e-2), device="cpu")
    trainer.train(_batch())
    engine_model = load_model(qwen2)
    load_weights(engine_model, trainer.state_dict(), strict=True)
    ids = torch.tensor([[1, 5, 9, 11, 12, 13]])
    with torch.no_grad():
        expected = trainer.module(input_ids=ids).logits
        assert (engine_model(ids) - expected).abs().max().item() <= 1e-4


def test_gradient_checkpointing_gives_the_same_update(llama):
    plain = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-2), device="cpu")
    ckpt = PolicyTrainer(llama, TrainerConfig(learning_rate=1e-2, gradient_checkpointing=True), device="cpu")
    start = plain.state_dict()
    calls = {"plain": 0, "ckpt": 0}
    for name, t in (("plain", plain), ("ckpt", ckpt)):
        # counted in forward itself: torch runs the recompute with module hooks off
        mlp = t.module.model.layers[0].mlp
        mlp.forward = lambda *a, n=name, f=mlp.forward: (calls.__setitem__(n, calls[n] + 1), f(*a))[1]
    assert ckpt.train(_batch())["loss"] == pytest.approx(plain.train(_batch())["loss"], abs=1e-6)
    assert _relative_gap(plain.state_dict(), ckpt.state_dict(), start) <= 1e-4
    # old log-probs (1 forward) + the update (1 forward, plus 1 recompute in backward when checkpointing)
    assert (calls["plain"], calls["ckpt"]) == (2, 3)


def test_exported_folder_loads_with_from_pretrained_and_has_the_trained_weights(qwen2, tmp_path):
    trainer = PolicyTrainer(qwen2, TrainerConfig(learning_rate=1e-2), device="cpu")
    trainer.train(_batch())
    out = trainer.export_hf(tmp_path / "final")
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    trained = trainer.state_dict()
    assert _max_diff({k: v for k, v in loaded.state_dict().items() if k in trained}, trained) == 0.0
    assert _max_diff(trained, {k: v for k, v in load_file(str(qwen2 / "model.safetensors")).items()}) > 0
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("12+3").input_ids == AutoTokenizer.from_pretrained(str(qwen2))("12+3").input_ids
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"


def test_trainer_config_takes_the_resolved_algorithm_defaults():
    dapo = TrainerConfig.from_algorithm(AlgorithmSpec(name="dapo", learning_rate=3e-6, mini_batch_size=8))
    assert (dapo.clip_ratio_low, dapo.clip_ratio_high, dapo.loss_aggregation) == (0.2, 0.28, "token-mean")
    assert (dapo.learning_rate, dapo.mini_batch_size) == (3e-6, 8)
    grpo = TrainerConfig.from_algorithm(AlgorithmSpec(name="grpo", kl_coef=0.01))
    assert (grpo.clip_ratio_high, grpo.loss_aggregation, grpo.kl_coef) == (0.2, "seq-mean-token-mean", 0.01)


def test_rollouts_with_per_token_fields_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="old_logprobs has 1 entries, response has 2 tokens"):
        Rollouts([[1]], [[2, 3]], [1.0], old_logprobs=[[0.0]])
    with pytest.raises(ValueError, match="empty prompt"):
        Rollouts([[]], [[2, 3]], [1.0])


DP_CONFIG = dict(learning_rate=1e-2, mini_batch_size=4, ppo_epochs=2, loss_aggregation="token-mean")


def _data_parallel_rank(rank: int, world_size: int, port: int, folder: str, backend: str, stage: int,
                        micro_tokens: int | None, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    cfg = TrainerConfig(**DP_CONFIG, micro_batch_tokens=micro_tokens)
    trainer = PolicyTrainer(folder, cfg, backend=backend, zero_stage=stage, device="cpu")
    metrics = trainer.train(_batch())
    trainer.save_checkpoint(Path(out) / "ckpt")
    trainer.export_hf(Path(out) / "final")
    state = trainer.state_dict()  # every rank: ZeRO-3 gathers collectively
    if rank == 0:
        torch.save({"metrics": metrics, "state": state}, Path(out) / "result.pt")
    # Leave together: a rank whose peer has gone can abort in gloo's teardown at exit.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("backend, stage, micro_tokens", [("torch", 0, None), ("deepspeed", 3, 10)])
def test_two_data_parallel_ranks_make_the_same_update_as_one_process(llama, tmp_path, backend, stage, micro_tokens):
    # Each rank takes half of every mini-batch; with a token budget the ranks' own plans
    # differ in length and are evened out (ZeRO-3 would hang on unequal passes).
    import multiprocessing

    from tlt.net import free_port

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_data_parallel_rank,
                         args=(r, 2, port, str(llama), backend, stage, micro_tokens, str(tmp_path)))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    got = torch.load(tmp_path / "result.pt", weights_only=True)

    single = PolicyTrainer(llama, TrainerConfig(**DP_CONFIG), device="cpu")
    start = single.state_dict()
    expected = single.train(_batch())
    assert got["metrics"]["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert got["metrics"]["clip_fraction"] == pytest.approx(expected["clip_fraction"])
    assert got["metrics"]["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert _relative_gap(single.state_dict(), got["state"], start) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "final", "result.pt"]
    exported = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert _max_diff(exported, got["state"]) == 0.0
