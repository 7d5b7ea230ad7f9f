"""Kept for the commands cited elsewhere: the same as `python benchmarks/bench.py soak`."""

import sys

from bench import main

sys.exit(main(["soak", *sys.argv[1:]]))
