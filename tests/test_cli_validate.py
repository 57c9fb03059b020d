"""`tlt validate`, `tlt crd`, `tlt --version` as a user runs them (a real subprocess)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bad_manifests import BAD_MANIFESTS

ROOT = Path(__file__).resolve().parents[1]


def tlt(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "tlt.cli", *args], capture_output=True, text=True, input=stdin, cwd=ROOT, timeout=120
    )


def test_examples_validate():
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    result = tlt("validate", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(examples)



def test_examples_have_distinct_names_so_applying_the_folder_creates_each():
    from tlt.api.load import load_jobs

    keys = [(job.metadata.namespace or "default", job.metadata.name)
            for path in sorted((ROOT / "examples").glob("*.yaml")) for job in load_jobs(path)]
    assert len(keys) == len(set(keys)), keys

def test_bad_manifests_exit_1_naming_the_field_without_traceback(tmp_path):
    files = {}
    for bad in BAD_MANIFESTS:
        path = tmp_path / f"{bad.name}.yaml"
        path.write_text(yaml.safe_dump(bad.manifest))
        files[str(path)] = bad
    # One process checks them all; each file's problems follow its own header line.
    result = tlt("validate", *files)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    sections: dict[str, str] = {}
    current = None
    for line in result.stderr.splitlines():
        header = line.split(": INVALID")[0]
        if header in files:
            current = header
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    assert set(sections) == set(files), "every bad manifest is reported INVALID"
    for path, bad in files.items():
        assert f"  {bad.field}:" in sections[path], (bad.name, sections[path])

    single = tlt("validate", next(iter(files)))
    assert single.returncode == 1  # and alone, too


@pytest.mark.parametrize(
    "content,message",
    [
        ("spec: [unclosed\n", "invalid YAML at line"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", 'kind: must be "ReasoningRLJob"'),
        ("just a string\n", "must be a mapping"),
        ("", "holds no YAML document"),
    ],
    ids=["bad-yaml", "unknown-kind", "scalar", "empty"],
)
def test_unreadable_input_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "job.yaml"
    path.write_text(content)
    result = tlt("validate", str(path))
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error():
    result = tlt("validate", "does/not/exist.yaml")
    assert result.returncode == 1
    assert "does/not/exist.yaml: INVALID" in result.stderr and "no such file" in result.stderr


def test_one_bad_file_fails_the_run_but_all_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(BAD_MANIFESTS[0].manifest))
    result = tlt("validate", str(bad), str(ROOT / "examples" / "quickstart.yaml"))
    assert result.returncode == 1
    assert "quickstart.yaml: ok" in result.stdout


def test_multi_document_files_check_every_document(tmp_path):
    good = (ROOT / "examples" / "quickstart.yaml").read_text()
    path = tmp_path / "two.yaml"
    path.write_text(good + "\n---\n" + yaml.safe_dump(BAD_MANIFESTS[0].manifest))
    result = tlt("validate", str(path))
    assert result.returncode == 1
    assert "(document 1): ok" in result.stdout
    assert "(document 2): INVALID" in result.stderr


def test_validate_reads_standard_input():
    result = tlt("validate", "-", stdin=(ROOT / "examples" / "quickstart.yaml").read_text())
    assert result.returncode == 0, result.stderr


def test_version_and_help():
    import tlt as package

    assert tlt("--version").stdout.strip() == f"tlt {package.__version__}"
    help_text = tlt("--help").stdout
    assert "validate" in help_text and "crd" in help_text
