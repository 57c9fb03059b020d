"""Cost table of the built-in tiny model on this machine (same as `tlt bench costs`).

    .venv/bin/python bench/costs.py [--json costs.json] [--batch-sizes 1,4,16,64]

Prints a table and, last, one JSON line with the table.
"""

import sys

from tlt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "costs", *sys.argv[1:]]))
