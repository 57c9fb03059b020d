"""A cluster job's checkpoints must land on a volume of spec.storage, or a restarted head pod starts from
step 0: `tlt validate` warns (the operator posts an Event, tests/test_operator_reconcile.py)."""

import yaml

from specs import manifest, spec_of
from tlt.api.storage import checkpoints_off_volume
from tlt.cli import main

RUNS = [{"name": "runs", "claimName": "runs-pvc", "mountPath": "/runs"}]


def test_checkpoints_under_a_writable_mount_survive_and_others_are_named():
    on_volume = manifest("ok", {"storage": RUNS, "output": {"path": "/runs/job"}})
    assert checkpoints_off_volume(spec_of(on_volume)) is None
    elsewhere = manifest("lost", {"storage": RUNS, "runPolicy": {"checkpoint": {"path": "/scratch/ckpt"}}, "output": {"path": "/runs/job"}})
    reason = checkpoints_off_volume(spec_of(elsewhere))
    assert "/scratch/ckpt" in reason and "runs at /runs" in reason and "runPolicy.checkpoint.path" in reason
    read_only = manifest("ro", {"storage": [{**RUNS[0], "readOnly": True}], "output": {"path": "/runs/job"}})
    assert "read-only" in checkpoints_off_volume(spec_of(read_only))
    assert checkpoints_off_volume(spec_of(manifest("none", {}))) is not None, "no storage at all: the container's disk"


def test_validate_warns_about_checkpoints_off_a_volume_and_still_passes(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest("job", {"output": {"path": "/out"}})))
    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "ok (ReasoningRLJob job)" in captured.out
    assert "warning: as a cluster job, checkpoints go to /out/checkpoints" in captured.err
    path.write_text(yaml.safe_dump(manifest("job", {"storage": RUNS, "output": {"path": "/runs/out"}})))
    assert main(["validate", str(path)]) == 0 and "warning" not in capsys.readouterr().err
