"""`tlt render FILE`: the child objects the operator would create, without a cluster."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    render = subparsers.add_parser(
        "render",
        help="print the Kubernetes objects the operator creates for a job",
        description="Print, as YAML, exactly the objects the operator creates for each ReasoningRLJob in FILE: "
        "ServiceAccount, Role, RoleBinding, ConfigMap, headless Service and the pods of the placement. "
        "Worker images default to the operator's (TLT_WORKER_IMAGE_CUDA / TLT_WORKER_IMAGE_CPU). "
        "Without a cluster the job has no uid, so ownerReferences are left out unless --uid is given.",
    )
    render.add_argument("file", metavar="FILE", help="YAML manifest ('-' reads standard input)")
    render.add_argument("-n", "--namespace", help="namespace for jobs that set none (default: default)")
    render.add_argument("--uid", help="uid of the job, to render ownerReferences as on a cluster")
    render.set_defaults(func=run_render)


def run_render(args) -> int:
    # Imported here: `tlt --help` and other commands should not pay for them.
    import yaml

    from tlt.api.commands import load_jobs_or_fail
    from tlt_operator.builders import OperatorDefaults, build_children

    jobs = load_jobs_or_fail(args.file)
    defaults = OperatorDefaults.from_env()
    objects = []
    for job in jobs:
        if args.namespace and not job.metadata.namespace:
            job.metadata.namespace = args.namespace
        if args.uid:
            job.metadata.__pydantic_extra__["uid"] = args.uid
        objects += build_children(job, defaults)
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0
