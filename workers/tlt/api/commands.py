"""`tlt validate` and `tlt crd` (placeholder until the spec lands)."""


def register(subparsers):
    pass
