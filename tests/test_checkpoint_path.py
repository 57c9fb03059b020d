"""runPolicy.checkpoint.path: where a run's checkpoints are written, found on resume and cleared by --fresh."""

from pathlib import Path

from specs import manifest

from tlt.api.load import parse_job
from tlt.coordinator.loop import EmbeddedRun, checkpoint_root, latest_checkpoint


class _SavingPool:
    """What `_checkpoint` needs of the worker pool: it writes the workers' state into a folder."""

    def save(self, folder: Path) -> None:
        (folder / "trainer").write_text("weights")


def _run(tmp_path, checkpoint: dict, fresh: bool = False) -> EmbeddedRun:
    job = parse_job(manifest("ckpt", {"runPolicy": {"checkpoint": checkpoint}, "output": {"path": str(tmp_path / "out")}}))
    run = EmbeddedRun(job, fresh=fresh, progress=False)
    run.pool = _SavingPool()
    return run


def test_checkpoints_go_to_runpolicy_checkpoint_path_and_resume_from_there(tmp_path):
    folder = tmp_path / "volume" / "ckpts"
    run = _run(tmp_path, {"path": str(folder), "keep": 1})
    run._checkpoint(step=3, position=12, drafter_version=2)
    run._checkpoint(step=4, position=16, drafter_version=2)

    assert sorted(p.name for p in folder.iterdir()) == ["step-4"]  # keep: 1
    assert (folder / "step-4" / "trainer").read_text() == "weights"
    assert not (tmp_path / "out" / "checkpoints").exists()  # not in the run folder
    found = latest_checkpoint(run.run_dir, run.spec)
    assert (found.step, found.position, found.folder) == (4, 16, folder / "step-4")
    assert latest_checkpoint(run.run_dir) is None  # without the spec only the run folder is looked at


def test_without_a_path_checkpoints_stay_in_the_run_folder(tmp_path):
    run = _run(tmp_path, {})
    assert checkpoint_root(run.spec, run.run_dir) == tmp_path / "out" / "checkpoints"
    run._checkpoint(step=1, position=4, drafter_version=0)
    assert latest_checkpoint(run.run_dir).step == 1


def test_fresh_start_clears_checkpoints_kept_outside_the_run_folder(tmp_path):
    folder = tmp_path / "ckpts"
    _run(tmp_path, {"path": str(folder)})._checkpoint(step=2, position=8, drafter_version=0)
    (folder / "notes.txt").write_text("not a checkpoint")
    fresh = _run(tmp_path, {"path": str(folder)}, fresh=True)
    assert latest_checkpoint(fresh.run_dir, fresh.spec) is None
    assert (folder / "notes.txt").exists()  # only checkpoints are removed
