"""tlt.models.resolve: the one place a model's name becomes its folder (job specs, commands, benchmarks)."""

import pytest
from specs import manifest, spec_of

from tlt.models import ConfigError, ModelConfig, random_model, save_model
from tlt.models.resolve import load_named, resolve_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("m")
    save_model(random_model(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1)), out)
    return out


def test_a_folder_a_builtin_name_and_a_jobs_model_section_resolve_to_a_model_folder(folder):
    assert resolve_model(folder) == folder
    assert resolve_model(str(folder)) == folder
    builtin = resolve_model("micro-arith", progress=False)
    assert (builtin / "config.json").is_file()
    job_model = spec_of(manifest()).model.model_copy(update={"builtin": "micro-arith"})  # the seconds-long recipe
    assert resolve_model(job_model, progress=False) == builtin
    assert resolve_model(spec_of(manifest(), model={"path": str(folder)}).model) == folder
    loaded_from, model = load_named(folder)
    assert loaded_from == folder and model.config.hidden_size == 16


def test_a_name_that_is_no_model_says_what_would_be(tmp_path):
    with pytest.raises(ConfigError, match="neither a model folder .* nor a built-in base model .*tiny-arith"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="spec.model.path: .* holds no config.json"):
        resolve_model(spec_of(manifest(), model={"path": str(tmp_path)}).model)
    with pytest.raises(ValueError, match="spec.model.hubId: the embedded runner reads models from disk"):
        resolve_model(spec_of(manifest(), model={"hubId": "org/m"}).model)  # embedded runs do not download
