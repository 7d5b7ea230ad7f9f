"""Kept for the commands cited elsewhere: the same as `python benchmarks/bench.py stats-backlog`."""

import sys

from bench import main

sys.exit(main(["stats-backlog", *sys.argv[1:]]))
