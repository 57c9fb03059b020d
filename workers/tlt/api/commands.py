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


def run_validate(args) -> int:
    failed = 0
    for path in args.files:
        try:
            documents = read_documents(path)
        except SpecError as err:
            failed += 1
            print(f"{path}: INVALID", file=sys.stderr)
            for e in err.errors:
                print(f"  {e}", file=sys.stderr)
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
                print(f"{label}: INVALID ({len(err.errors)} problem{'s' if len(err.errors) > 1 else ''})", file=sys.stderr)
                for e in err.errors:
                    print(f"  {e}", file=sys.stderr)
                continue
            if not args.quiet:
                print(f"{label}: ok (ReasoningRLJob {job.metadata.name})")
    return 1 if failed else 0


def run_crd(args) -> int:
    sys.stdout.write(fields_table() if args.fields else render_crd())
    return 0
