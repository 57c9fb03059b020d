"""`tlt render` prints exactly the objects the operator creates."""

import yaml

from tlt.api.load import load_jobs
from tlt.cli import main
from tlt_operator.builders import OperatorDefaults, build_children


def test_render_prints_the_operator_children_of_each_job(repo_root, capsys, monkeypatch):
    monkeypatch.delenv("TLT_WORKER_IMAGE_CUDA", raising=False)
    monkeypatch.delenv("TLT_WORKER_IMAGE_CPU", raising=False)
    path = repo_root / "examples" / "qwen2.5-7b-grpo.yaml"
    assert main(["render", str(path)]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == build_children(load_jobs(path)[0], OperatorDefaults())
    assert [o["kind"] for o in printed][:4] == ["Secret", "ServiceAccount", "Role", "RoleBinding"]
    assert {"ConfigMap", "Service", "NetworkPolicy", "Pod"} <= {o["kind"] for o in printed}


def test_render_uses_operator_image_defaults_and_uid(repo_root, capsys, monkeypatch):
    monkeypatch.setenv("TLT_WORKER_IMAGE_CPU", "registry.example/tlt-cpu:9")
    assert main(["render", str(repo_root / "examples" / "quickstart.yaml"), "--uid", "abc", "-n", "ml"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    pods = [o for o in printed if o["kind"] == "Pod"]
    assert pods and all(p["spec"]["containers"][0]["image"] == "registry.example/tlt-cpu:9" for p in pods)
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "abc" and o["metadata"]["namespace"] == "ml" for o in printed)


def test_render_of_an_invalid_manifest_fails_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: tlt.dev/v1alpha1\nkind: ReasoningRLJob\nmetadata: {name: x}\n"
        "spec: {model: {builtin: tiny-arith}, task: {name: arith}, algorithm: {groupSize: 1}}\n"
    )
    assert main(["render", str(bad)]) == 1
    assert "spec.algorithm.groupSize" in capsys.readouterr().err


def test_rendered_children_pass_strict_schema_validation(repo_root, capsys, tmp_path):
    """Every built-in kind the operator creates (the NetworkPolicy among them) is valid for Kubernetes 1.35."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    assert main(["render", str(repo_root / "examples" / "quickstart-cluster.yaml"), "--uid", "abc", "-n", "ml"]) == 0
    out = tmp_path / "children.yaml"
    out.write_text(capsys.readouterr().out)
    assert "kind: NetworkPolicy" in out.read_text()
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([validator, "-k", "1.35.0", "--strict", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
