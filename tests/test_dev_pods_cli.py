"""`tlt dev pods JOB`: its arguments, its progress line and its errors without a cluster.

The run itself (LocalPods driving a job through the operator on the control plane)
is tested in tests/controlplane/; here only what needs no API server.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tlt.cli import build_parser, main
from tlt.dev.commands import progress_line


def test_pods_arguments_and_defaults():
    args = build_parser().parse_args(["dev", "pods", "quickstart"])
    assert args.job == "quickstart" and args.namespace == "default"
    assert args.workdir is None and args.state_dir is None
    assert args.interval == 5.0 and args.pods_timeout == 120.0 and args.threads == 1
    args = build_parser().parse_args(["dev", "pods", "j", "-n", "ml", "--workdir", "/tmp/w", "--state-dir", "/tmp/s",
                                      "--interval", "1", "--pods-timeout", "3", "--threads", "2"])
    assert (args.namespace, str(args.workdir), str(args.state_dir)) == ("ml", "/tmp/w", "/tmp/s")
    assert (args.interval, args.pods_timeout, args.threads) == (1.0, 3.0, 2)


def test_pods_help_says_what_it_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["dev", "pods", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("JOB", "--namespace", "--workdir", "tlt worker", "tlt dev cluster up", "Succeeded"):
        assert word in out, word
    with pytest.raises(SystemExit):
        main(["dev", "pods"])  # JOB is required
    assert "JOB" in capsys.readouterr().err


def test_pods_without_a_cluster_is_a_clear_error(tmp_path, capsys):
    code = main(["dev", "pods", "quickstart", "--state-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: no dev cluster running in") and "tlt dev cluster up" in err
    assert "Traceback" not in err


def test_pods_with_a_dead_cluster_is_a_clear_error(tmp_path, capsys):
    """A state file left by a cluster that is gone (killed, machine rebooted) counts as none."""
    state = tmp_path / "dev-cluster"
    state.mkdir()
    (state / "state.json").write_text(
        '{"binary": "/nonexistent/tlt-controlplane", "ports": {"apiserver": 1}, "pids": {"kube-apiserver": 999999999}}')
    assert main(["dev", "pods", "quickstart", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert "no dev cluster running" in err and "Traceback" not in err


def _pod(name, phase="Running", role=None, deleting=False):
    labels = {"tlt.dev/job": "quickstart"} | ({"tlt.dev/active-role": role} if role else {})
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, labels=labels, deletion_timestamp="now" if deleting else None),
        status=SimpleNamespace(phase=phase))


def test_progress_line_shows_phase_steps_drafter_and_each_pods_active_role():
    job = {
        "metadata": {"name": "quickstart"},
        "spec": {"algorithm": {"steps": 3}},
        "status": {"phase": "Running", "step": 1, "totalSteps": 3, "progress": {"phase": "rollout"},
                   "drafter": {"version": 2, "acceptanceLength": 1.5}},
    }
    pods = [_pod("quickstart-trainer-0", role="trainer"), _pod("quickstart-rollout-1", role="drafter"),
            _pod("quickstart-rollout-0", phase="Pending")]
    assert progress_line(job, pods) == (
        "Running, step 1/3, rollout, drafter v2 (acceptance 1.50) | "
        "rollout-0=-/Pending rollout-1=drafter/Running trainer-0=trainer/Running")
    # Before the operator wrote a status: the spec's step count, no pods yet.
    assert progress_line({"metadata": {"name": "j"}, "spec": {"algorithm": {"steps": 8}}}, []) == \
        "Pending, step 0/8 | no pods"
    assert "trainer-0=trainer/Terminating" in progress_line(job, [_pod("quickstart-trainer-0", role="trainer", deleting=True)])


def test_leftover_processes_of_the_local_pods_are_found_and_stopped(tmp_path):
    """A pod's Ray node runs in a session of its own: found by the pod's TLT_CONFIG, then stopped."""
    import os
    import subprocess
    import sys

    from tlt.dev.pods import leftover_pids, stop_leftovers

    workdir = tmp_path / "pods"
    env = {**os.environ, "TLT_CONFIG": str(workdir / "job-rollout-0" / "config" / "job.yaml")}
    # Ignores SIGTERM, like `ray start --block`: the SIGKILL after the grace period ends it.
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True, stdout=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "TLT_CONFIG": str(tmp_path / "elsewhere" / "job.yaml")})
    try:
        assert child.stdout.readline() == b"up\n"
        assert leftover_pids(workdir) == [child.pid]
        assert stop_leftovers(workdir, grace=0.5) == [child.pid]
        assert child.wait(timeout=10) == -9
        assert leftover_pids(workdir) == [] and other.poll() is None
    finally:
        for process in (child, other):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_killed_process_reports_the_exit_code_a_kubelet_would():
    from tlt.dev.pods import exit_code

    assert exit_code(-9) == 137 and exit_code(-15) == 143, "128 + the signal"
    assert exit_code(0) == 0 and exit_code(2) == 2


def test_paths_under_a_pods_volume_mounts_point_into_its_local_folders(tmp_path):
    from tlt.dev.pods import local_path

    mounts = {"/etc/tlt": tmp_path / "config", "/etc/tlt-ray": tmp_path / "volumes" / "ray-token"}
    assert local_path("/etc/tlt/job.yaml", mounts) == str(tmp_path / "config" / "job.yaml")
    assert local_path("/etc/tlt-ray/token", mounts) == str(tmp_path / "volumes" / "ray-token" / "token")
    assert local_path("/etc/tltx/other", mounts) == "/etc/tltx/other" and local_path("--head", mounts) == "--head"
