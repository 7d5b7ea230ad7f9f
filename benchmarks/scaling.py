"""Kept for the commands cited elsewhere: the same as `python benchmarks/bench.py scaling`."""

import sys

from bench import main

sys.exit(main(["scaling", *sys.argv[1:]]))
