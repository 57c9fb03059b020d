"""The CRD and the examples against the real kube-apiserver.

`kubectl apply -f crds/` and `-f examples/`; the bad manifests of the foundation tests
rejected by the server where the structural schema or a CEL rule can express the rule;
`kubectl get rlj` printer columns; the status subresource; defaulting and pruning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bad_manifests import BAD_MANIFESTS, base_manifest

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRD_NAME = "reasoningrljobs.tlt.dev"
PRINTER_COLUMNS = ["NAME", "PHASE", "STEP", "ROLLOUT", "DRAFTER", "ACCEPT", "AGE"]

SERVER_REJECTED = [b for b in BAD_MANIFESTS if b.server_rejects]


def example_namespaces() -> set[str]:
    namespaces = set()
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                namespaces.add(doc.get("metadata", {}).get("namespace", "default"))
    return namespaces


def test_crd_applies_and_is_established(crd, kubectl):
    got = json.loads(kubectl("get", "crd", crd, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    # A structural schema: the server would report NonStructuralSchema otherwise.
    assert conditions.get("NonStructuralSchema", "False") == "False", got["status"]["conditions"]
    assert "rlj" in got["status"]["acceptedNames"]["shortNames"]


def test_examples_apply(crd, kubectl):
    for ns in example_namespaces():
        kubectl("create", "namespace", ns, check=False)
    try:
        out = kubectl("apply", "--validate=strict", "-f", str(EXAMPLES)).stdout
        names = [line.split()[0] for line in out.splitlines()]
        assert len(names) == len(list(EXAMPLES.glob("*.yaml"))), out
        assert all(n.startswith("reasoningrljob.tlt.dev/") for n in names), out
        listed = json.loads(kubectl("get", "rlj", "-A", "-o", "json").stdout)["items"]
        assert {i["metadata"]["name"] for i in listed} >= {n.split("/", 1)[1] for n in names}
        # Server-side defaulting: the stored objects carry the schema's defaults.
        quickstart = next(i for i in listed if i["metadata"]["name"] == "quickstart")
        assert quickstart["spec"] != {} and quickstart["metadata"]["generation"] == 1
    finally:
        kubectl("delete", "-f", str(EXAMPLES), "--ignore-not-found", "--wait=false", check=False)


def test_quickstart_is_accepted_by_server_dry_run(crd, kubectl, namespace):
    """The control for the rejections below: the unmodified base manifest passes."""
    doc = base_manifest()
    doc["metadata"]["namespace"] = namespace
    kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(doc))


@pytest.mark.parametrize("bad", SERVER_REJECTED, ids=[b.name for b in SERVER_REJECTED])
def test_server_rejects_bad_manifest(crd, kubectl, namespace, bad):
    doc = json.loads(json.dumps(bad.manifest))
    doc["metadata"]["namespace"] = namespace
    result = kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                     input=json.dumps(doc), check=False)
    message = result.stderr + result.stdout
    assert result.returncode != 0, f"{bad.name}: the server accepted it:\n{message}"
    assert bad.field in message, f"{bad.name}: expected {bad.field!r} in:\n{message}"


def test_get_rlj_shows_printer_columns(crd, kubectl, namespace):
    doc = base_manifest()
    doc["metadata"] = {"name": "columns", "namespace": namespace}
    kubectl("apply", "-f", "-", input=json.dumps(doc))
    status = {"phase": "Running", "stepText": "3/6", "rolloutText": "2/2, 1 lent",
              "drafter": {"version": 4, "acceptanceLength": 2.5}}
    kubectl("patch", "rlj", "columns", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))
    out = kubectl("get", "rlj", "-n", namespace).stdout.splitlines()
    assert out[0].split() == PRINTER_COLUMNS, out
    row = out[1]
    assert row.startswith("columns") and "Running" in row and "3/6" in row, out
    assert "2/2, 1 lent" in row and " 4 " in row and "2.5" in row, out
    # The same with the short name and in the `tlt` category.
    assert kubectl("get", "tlt", "-n", namespace).stdout.splitlines()[0].split() == PRINTER_COLUMNS


def test_status_is_a_subresource(crd, kubectl, namespace):
    doc = base_manifest()
    doc["metadata"] = {"name": "status-sub", "namespace": namespace}
    kubectl("apply", "-f", "-", input=json.dumps(doc))
    # A status change through the main resource is ignored ...
    kubectl("patch", "rlj", "status-sub", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Running"}}')
    got = json.loads(kubectl("get", "rlj", "status-sub", "-n", namespace, "-o", "json").stdout)
    assert got.get("status", {}).get("phase") != "Running"
    generation = got["metadata"]["generation"]
    # ... and goes through the subresource without bumping the generation.
    kubectl("patch", "rlj", "status-sub", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", '{"status":{"phase":"Running"}}')
    got = json.loads(kubectl("get", "rlj", "status-sub", "-n", namespace, "-o", "json").stdout)
    assert got["status"]["phase"] == "Running"
    assert got["metadata"]["generation"] == generation


def test_unknown_fields_are_pruned_without_strict_validation(crd, kubectl, namespace):
    doc = base_manifest()
    doc["metadata"] = {"name": "pruned", "namespace": namespace}
    doc["spec"]["notAField"] = 1
    result = kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(doc))
    got = json.loads(kubectl("get", "rlj", "pruned", "-n", namespace, "-o", "json").stdout)
    assert "notAField" not in got["spec"], result.stderr
