"""Whether a cluster job's checkpoints survive its pods: they must land on a volume of `spec.storage`.

A path outside every writable mount is the container's own filesystem: a restarted head
pod (a failure, a preemption, a spec change) finds no checkpoint and starts from step 0.
`tlt validate` warns about it and the operator posts an Event (CheckpointsNotOnVolume).
Pure: no cluster, no torch.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tlt.api.model import ReasoningRLJobSpec


def checkpoint_folder(spec: ReasoningRLJobSpec) -> PurePosixPath:
    """Where the head pod writes checkpoints: `runPolicy.checkpoint.path`, else `<output.path>/checkpoints`
    (the run folder of a cluster job is `output.path`)."""
    return PurePosixPath(spec.run_policy.checkpoint.path or f"{spec.output.path}/checkpoints")


def checkpoints_off_volume(spec: ReasoningRLJobSpec) -> str | None:
    """Why the job's checkpoints would not survive a pod restart, or None when they land on a writable volume."""
    folder = checkpoint_folder(spec)
    for volume in spec.storage:
        mount = PurePosixPath(volume.mount_path)
        if folder == mount or mount in folder.parents:
            if volume.read_only:
                return (f"checkpoints go to {folder}, on volume {volume.name} mounted read-only: "
                        f"set spec.storage[{volume.name}].readOnly: false or point runPolicy.checkpoint.path elsewhere")
            return None
    mounts = ", ".join(f"{v.name} at {v.mount_path}" for v in spec.storage) or "none"
    return (f"checkpoints go to {folder}, which is on no volume of spec.storage (mounted: {mounts}): a restarted "
            f"head pod starts from step 0; set runPolicy.checkpoint.path (or output.path) under a volume's mountPath")
