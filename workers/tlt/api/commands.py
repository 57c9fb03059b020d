"""`tlt validate` and `tlt crd`."""

from __future__ import annotations

import sys

from tlt.api.crd import render_crd
from tlt.api.docs import fields_table
from tlt.api.errors import SpecError
from tlt.api.load import parse_job, read_documents


def register(subparsers) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check ReasoningRLJob manifests and list every problem",
        description="Check ReasoningRLJob manifests offline: schema, defaults and cross-field rules. "
        "Prints every problem with the field path, the bad value and what is allowed. "
        "Exit 0 when all are valid, 1 otherwise.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML manifests ('-' reads standard input)")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.set_defaults(func=run_validate)

    crd = subparsers.add_parser(
        "crd",
        help="print the ReasoningRLJob CustomResourceDefinition",
        description="Print the CRD generated from tlt's spec model (pipe it to `kubectl apply -f -`).",
    )
    crd.add_argument("--fields", action="store_true", help="print the table of spec fields and defaults instead")
    crd.set_defaults(func=run_crd)


def load_jobs_or_fail(path: str):
    """The jobs of a manifest file, or a CommandError listing every problem (for commands that run them)."""
    from tlt.api.load import load_jobs
    from tlt.cli import CommandError

    try:
        jobs = load_jobs(path)
    except SpecError as err:
        problems = "\n  ".join(map(str, err.errors))
        raise CommandError(f"{path} is not a valid ReasoningRLJob (see `tlt validate {path}`):\n  {problems}") from None
    if not jobs:
        raise CommandError(f"{path} holds no ReasoningRLJob")
    return jobs


def _report_invalid(label: str, errors) -> None:
    count = f" ({len(errors)} problem{'s' if len(errors) > 1 else ''})" if len(errors) > 1 else ""
    print(f"{label}: INVALID{count}", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)


def run_validate(args) -> int:
    failed = 0
    for path in args.files:
        try:
            documents = read_documents(path)
        except SpecError as err:
            failed += 1
            _report_invalid(path, err.errors)
            continue
        if not documents:
            failed += 1
            print(f"{path}: INVALID\n  the file holds no YAML document", file=sys.stderr)
        for doc in documents:
            label = doc.source if len(documents) == 1 else doc.where
            try:
                job = parse_job(doc.body)
            except SpecError as err:
                failed += 1
                _report_invalid(label, err.errors)
                continue
            if not args.quiet:
                print(f"{label}: ok (ReasoningRLJob {job.metadata.name})")
            from tlt.api.storage import checkpoints_off_volume

            lost = checkpoints_off_volume(job.spec)
            if lost:  # harmless for `tlt run`; a cluster job would restart from step 0
                print(f"{label}: warning: as a cluster job, {lost}", file=sys.stderr)
    return 1 if failed else 0


def run_crd(args) -> int:
    sys.stdout.write(fields_table() if args.fields else render_crd())
    return 0
