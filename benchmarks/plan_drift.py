"""Kept for the commands cited elsewhere: the same as `python benchmarks/bench.py plan-drift`."""

import sys

from bench import main

sys.exit(main(["plan-drift", *sys.argv[1:]]))
