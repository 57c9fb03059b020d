"""The ReasoningRLJob spec: defaults, validation messages, every error at once."""

import copy

import pytest

from bad_manifests import BAD_MANIFESTS, base_manifest
from tlt.api.errors import SpecError
from tlt.api.load import parse_job


def test_minimal_manifest_gets_documented_defaults():
    job = parse_job(
        {
            "apiVersion": "tlt.dev/v1alpha1",
            "kind": "ReasoningRLJob",
            "metadata": {"name": "tiny"},
            "spec": {"model": {"path": "/models/m"}, "data": {"path": "/d.jsonl"}, "rollout": {"engine": "torch"}},
        }
    )
    spec = job.spec
    assert spec.placement == "disaggregated"
    assert spec.algorithm.name == "grpo"
    assert spec.algorithm.group_size == 8
    assert spec.algorithm.clip_ratio_high == 0.2
    assert spec.algorithm.loss_aggregation == "seq-mean-token-mean"
    assert spec.speculative.mode == "adaptive"
    assert spec.speculative.batch_threshold == "auto"
    assert spec.speculative.strategies == ["4_1_4", "6_1_6", "4_2_8", "6_4_16"]
    assert spec.drafter.window_tokens == 512
    assert spec.elasticity.lend_idle is True
    assert spec.run_policy.backoff_limit == 3
    assert spec.data.prompt_field == "prompt"


def test_dapo_gets_clip_higher_and_token_mean_unless_set():
    doc = base_manifest()
    doc["spec"]["algorithm"]["name"] = "dapo"
    doc["spec"]["algorithm"].pop("lossAggregation", None)
    assert parse_job(doc).spec.algorithm.clip_ratio_high == 0.28
    assert parse_job(doc).spec.algorithm.loss_aggregation == "token-mean"
    doc["spec"]["algorithm"]["clipRatioHigh"] = 0.3
    doc["spec"]["algorithm"]["lossAggregation"] = "seq-mean-token-sum"
    assert parse_job(doc).spec.algorithm.clip_ratio_high == 0.3
    assert parse_job(doc).spec.algorithm.loss_aggregation == "seq-mean-token-sum"


def test_scientific_notation_is_a_number_as_in_kubernetes():
    doc = base_manifest()
    import yaml

    from tlt.api.load import _Loader

    doc = yaml.load("learningRate: 1e-6\nlr2: 2.5E+3\n", Loader=_Loader)
    assert doc == {"learningRate": 1e-6, "lr2": 2500.0}


def test_manifest_round_trips_through_camel_case():
    job = parse_job(base_manifest())
    again = parse_job({"apiVersion": "tlt.dev/v1alpha1", "kind": "ReasoningRLJob", **job.to_manifest()})
    assert again == job
    assert "maxResponseTokens" in job.to_manifest()["spec"]["algorithm"]


@pytest.mark.parametrize("bad", BAD_MANIFESTS, ids=lambda b: b.name)
def test_bad_manifest_is_rejected_naming_the_field(bad):
    with pytest.raises(SpecError) as err:
        parse_job(bad.manifest)
    paths = [e.path for e in err.value.errors]
    assert bad.field in paths, f"errors name {paths}, not {bad.field}"


def test_distinct_bad_manifests_number_at_least_twenty():
    assert len({b.name for b in BAD_MANIFESTS}) >= 20


def test_every_error_is_reported_at_once_with_value_and_allowed_range():
    doc = base_manifest()
    doc["spec"]["rollout"]["replicas"] = 0
    doc["spec"]["algorithm"]["groupSize"] = 1
    doc["spec"]["algorithm"]["stepz"] = 3  # unknown field beside a rule error in the same object
    doc["spec"]["speculative"]["strategies"] = ["4_1_4", "8_x_16", "2_8_4"]
    with pytest.raises(SpecError) as err:
        parse_job(doc)
    text = str(err.value)
    assert "spec.rollout.replicas: must be >= 1, got 0" in text
    assert 'spec.speculative.strategies[1]: "8_x_16" is not steps_topk_verifyTokens' in text
    assert "spec.speculative.strategies[2]" in text and "topk (8) must be <= verifyTokens (4)" in text
    assert "spec.algorithm.groupSize: must be >= 2" in text
    assert 'spec.algorithm.stepz: unknown field; did you mean "steps"?' in text


def test_enum_errors_list_the_allowed_values():
    doc = base_manifest()
    doc["spec"]["placement"] = "spread"
    with pytest.raises(SpecError) as err:
        parse_job(doc)
    assert str(err.value) == 'spec.placement: must be one of "disaggregated" or "colocated", got "spread"'


def test_non_mapping_document_is_an_error_not_a_crash():
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_job(["a", "list"])


def test_bad_manifests_do_not_share_state_with_the_base():
    before = copy.deepcopy(base_manifest())
    _ = [b.manifest for b in BAD_MANIFESTS]
    assert base_manifest() == before
