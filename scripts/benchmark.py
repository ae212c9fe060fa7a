#!/usr/bin/env python
"""Run a benchmark suite: ``python scripts/benchmark.py SUITE --preset quick --out benchmarks/results``.

The same as ``ugodit benchmark SUITE ...``; see ``ugodit_pl.apps.benchmarks.cli`` for the options.
"""

import sys

from ugodit_pl.apps.benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
