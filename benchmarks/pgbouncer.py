"""Kept for the commands cited elsewhere: the same as `python benchmarks/bench.py pgbouncer`."""

import sys

from bench import main

sys.exit(main(["pgbouncer", *sys.argv[1:]]))
