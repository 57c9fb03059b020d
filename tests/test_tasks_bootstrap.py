"""The tiny base model: deterministic bootstrap, an ordinary HF folder, cached and reused."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tlt.tasks import bootstrap as boot
from tlt.tasks.bootstrap import BOOTSTRAP_INFO, ensure_base_model, recipe_for


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return ensure_base_model("micro-arith", out=tmp_path_factory.mktemp("a") / "m", progress=False, threads=1)


def test_same_recipe_twice_gives_identical_weights_that_transformers_loads(tmp_path, cache, first):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    second = ensure_base_model("micro-arith", out=tmp_path / "b", progress=False, threads=1)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    model = AutoModelForCausalLM.from_pretrained(str(first))
    tokenizer = AutoTokenizer.from_pretrained(str(first))
    assert model.config.num_hidden_layers == recipe_for("micro-arith").shape.num_hidden_layers
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("42 e+7 o+5 n=03\n", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    info = json.loads((first / BOOTSTRAP_INFO).read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cores, load, threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 3.5, 1),
                                                  (8, 0.0, 4), (8, 5.2, 3), (1, 0.0, 1)])
def test_a_build_uses_the_idle_cores_by_load_average(monkeypatch, cores, load, threads):
    monkeypatch.setattr(boot.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(boot.os, "getloadavg", lambda: (load, load, load))
    assert boot.idle_threads() == threads


def test_a_different_seed_gives_different_weights(tmp_path, cache, first):
    other = ensure_base_model("micro-arith", out=tmp_path / "c", progress=False, seed=1)
    a, c = load_file(first / "model.safetensors"), load_file(other / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cached_model_is_reused_without_training_again(cache, monkeypatch):
    folder = ensure_base_model("micro-arith", progress=False)
    assert folder.parent == cache / "models"
    assert folder.name == f"micro-arith-{recipe_for('micro-arith').key()}"

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(boot, "bootstrap", no_training)
    assert ensure_base_model("micro-arith", progress=False) == folder


def test_a_changed_recipe_gets_its_own_folder(cache):
    assert recipe_for("micro-arith").key() != recipe_for("micro-arith", steps=7).key()
    assert boot.model_folder("micro-arith", recipe_for("micro-arith", seed=2)) != \
        boot.model_folder("micro-arith", recipe_for("micro-arith"))


def test_an_interrupted_build_is_built_again(cache, monkeypatch, first):
    folder = boot.model_folder("micro-arith", recipe_for("micro-arith"))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # left behind without the info file
    built = []

    def copy_of_first(recipe, staging, **options):
        built.append(recipe.key())
        shutil.copytree(first, staging)

    monkeypatch.setattr(boot, "bootstrap", copy_of_first)
    assert ensure_base_model("micro-arith", progress=False) == folder
    assert built == [recipe_for("micro-arith").key()]
    assert (folder / "model.safetensors").is_file()


def test_unknown_base_model_names_the_known_ones(cache):
    with pytest.raises(KeyError, match="known are .*tiny-arith"):
        ensure_base_model("huge-arith")


def test_the_default_model_ships_built_from_its_current_recipe():
    # A changed tiny-arith recipe without a rebuilt package copy would make every new user train
    # for 8-16 minutes: rebuild with `tlt task bootstrap --train --out workers/tlt/tasks/pretrained/tiny-arith`.
    from transformers import AutoModelForCausalLM

    recipe = recipe_for("tiny-arith")
    shipped = boot.shipped_folder("tiny-arith", recipe)
    assert shipped is not None, "the shipped tiny-arith model is missing or was built from another recipe"
    info = json.loads((shipped / BOOTSTRAP_INFO).read_text())
    assert info["recipe_key"] == recipe.key()
    assert info["final_loss"] < 0.2
    model = AutoModelForCausalLM.from_pretrained(str(shipped))
    assert model.config.num_hidden_layers == recipe.shape.num_hidden_layers
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_a_new_user_gets_the_shipped_model_copied_into_the_cache_without_training(cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the shipped model was trained again")

    monkeypatch.setattr(boot, "bootstrap", no_training)
    folder = ensure_base_model("tiny-arith", progress=False)
    assert folder == cache / "models" / f"tiny-arith-{recipe_for('tiny-arith').key()}"
    shipped = boot.shipped_folder("tiny-arith", recipe_for("tiny-arith"))
    assert (folder / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
    assert ensure_base_model("tiny-arith", progress=False) == folder  # and reused from then on


@pytest.mark.parametrize("options", [{"train": True}, {"seed": 3}, {"steps": 10}])
def test_train_or_a_changed_recipe_trains_instead_of_copying_the_shipped_model(tmp_path, cache, monkeypatch,
                                                                                 options):
    trained = []

    def fake_training(recipe, staging, **kwargs):
        trained.append(recipe.key())
        staging.mkdir(parents=True)

    monkeypatch.setattr(boot, "bootstrap", fake_training)
    ensure_base_model("tiny-arith", out=tmp_path / "m", progress=False, **options)
    assert trained == [recipe_for("tiny-arith", **{k: v for k, v in options.items() if k != "train"}).key()]


def test_train_without_out_is_refused_naming_the_fix(cache, capsys):
    from tlt.cli import main

    assert main(["task", "bootstrap", "--train"]) != 0
    assert "--train needs --out DIR" in capsys.readouterr().err
