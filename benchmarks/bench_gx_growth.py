"""Does validation slow down as a data directory's Great Expectations results pile up?

Runs the catalog checkpoint of a file context (prodassoc's own suites, ``validation.GxSuites``)
on a 500-row frame, then builds the Data Docs, once per "night", and prints at each step the
mean seconds of a checkpoint run and of a Data Docs build (whose index lists every stored result)
over the nights since the previous step, and the disk each result and its page take.

    python benchmarks/bench_gx_growth.py --results 10,100,300,600                    # the index: newest 200
    python benchmarks/bench_gx_growth.py --results 10,100,300,600 --index-results 0  # every result
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

from prodassoc_core.data import validation


def _kb(path: Path) -> int:
    return int(subprocess.check_output(["du", "-sk", str(path)]).split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="10,100,300,600", help="result counts to report at (ascending)")
    parser.add_argument("--index-results", type=int, default=validation.DOCS_INDEX_RESULTS,
                        help="results the Data Docs index lists (validation.docs_index_results; 0: all, as "
                             "before the limit) (default: %(default)s)")
    args = parser.parse_args()
    steps = sorted(int(n) for n in args.results.split(","))
    root = Path(tempfile.mkdtemp(prefix="bench-gx-"))
    try:
        gx = validation.GxSuites(root / "gx")
        gx.limit_docs_index(args.index_results or None)  # 0: every stored result, GE's default
        n = 500
        frame = pd.DataFrame({"product_id": [f"P{i}" for i in range(n)], "title": [f"product {i}" for i in range(n)],
                              "description": ["a product"] * n, "category": ["home"] * n, "brand": [None] * n})
        params = {"max_text_length": 100}
        gx.run("catalog", frame, params, "warm-up")
        gx.build_docs()
        base_kb, done = _kb(root / "gx"), 1
        print("results  s/checkpoint  s/docs-build  KB/result")
        for target in steps:
            run_s = docs_s = 0.0
            runs = 0
            while done < target:  # a night: its checkpoint run, then the Data Docs build with its page
                start = time.perf_counter()
                gx.run("catalog", frame, params, f"night-{done:05d}")
                middle = time.perf_counter()
                gx.build_docs()
                run_s, docs_s = run_s + middle - start, docs_s + time.perf_counter() - middle
                done, runs = done + 1, runs + 1
            print(f"{done:7d}  {run_s / max(runs, 1):12.3f}  {docs_s / max(runs, 1):12.2f}  "
                  f"{(_kb(root / 'gx') - base_kb) / max(done - 1, 1):9.1f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
