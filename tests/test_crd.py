"""The CRD is generated from the typed model and is a valid structural schema."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tlt.api.crd import build_crd, render_crd
from tlt.api.docs import fields_table

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "reasoningrljob.yaml"


def test_crd_file_equals_the_generated_one():
    assert CRD_FILE.read_text() == render_crd(), "crds/ drifted from tlt.api.model: run `tlt crd > crds/reasoningrljob.yaml`"


def test_fields_doc_equals_the_generated_one():
    doc = ROOT / "docs" / "job-spec.md"
    assert doc.read_text() == fields_table(), "docs/job-spec.md drifted: run `tlt crd --fields > docs/job-spec.md`"


def test_crd_passes_offline_schema_validation():
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([validator, "-k", "1.35", "--strict", str(CRD_FILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def _walk(schema, path="$"):
    yield path, schema
    for key, prop in schema.get("properties", {}).items():
        yield from _walk(prop, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    # Every node has a type, or is int-or-string, or explicitly keeps unknown fields.
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        ), path
        assert "anyOf" not in node and "$ref" not in node, path


def test_crd_names_columns_and_subresources():
    crd = build_crd()
    assert crd["metadata"]["name"] == "reasoningrljobs.tlt.dev"
    assert crd["spec"]["names"]["shortNames"] == ["rlj"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Step", "Rollout", "Drafter", "Accept", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["model"]
    assert spec["properties"]["algorithm"]["properties"]["groupSize"] == {
        "type": "integer",
        "minimum": 1,
        "description": "Responses per prompt; advantages are normalized within a group.",
        "default": 8,
    }


def test_cross_field_rules_become_cel_validations():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "has(self.data) != has(self.task)" in rules
    algorithm_rules = [r["rule"] for r in spec["properties"]["algorithm"]["x-kubernetes-validations"]]
    assert "self.groupSize >= 2" in algorithm_rules
    strategy_item = spec["properties"]["speculative"]["properties"]["strategies"]["items"]
    assert strategy_item["x-kubernetes-validations"], "per-strategy CEL rules are missing"


def test_crd_defaults_match_the_model_defaults():
    from tlt.api.model import ReasoningRLJobSpec

    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = ReasoningRLJobSpec.model_validate({"model": {"path": "/m"}, "task": {}}).to_manifest()
    for section in ("algorithm", "speculative", "drafter", "rollout", "elasticity"):
        for key, prop in spec["properties"][section]["properties"].items():
            if "default" in prop and prop["default"] != {}:
                assert defaults[section][key] == prop["default"], f"spec.{section}.{key}"


def test_crd_command_prints_the_file():
    out = subprocess.run([sys.executable, "-m", "tlt.cli", "crd"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0
    assert yaml.safe_load(out.stdout)["kind"] == "CustomResourceDefinition"
    assert out.stdout == CRD_FILE.read_text()
