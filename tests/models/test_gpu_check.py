"""scripts/gpu_check.sh --cpu-dry-run (issue 15 item 5): the GPU check's whole route on the CPU —
import the shipped sample, `prodassoc train` with the tiny encoder and a 0.5-minute budget, the stage
table (examples/s, tokens/s, peak GPU memory, MFU) and `prodassoc evaluate`'s table.

It starts three CLI commands, each with Prefect's temporary server: ~3.5 min on the 2-core
development machine, over the suite's per-file budget, so it runs only with
PRODASSOC_GPU_CHECK_TEST=1 (no GPU is needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(os.environ.get("PRODASSOC_GPU_CHECK_TEST") != "1",
                                reason="~3.5 min: set PRODASSOC_GPU_CHECK_TEST=1")


def test_cpu_dry_run_prints_every_stage_and_the_harness_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODASSOC_")}
    env |= {"PRODASSOC_VENV": str(Path(sys.executable).parents[1]), "GPU_CHECK_DIR": str(tmp_path / "work"),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-dry-run"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| stage | steps | stop | examples/s | tokens/s | peak GPU memory | MFU |" in out
    for stage in ("mlm", "teacher", "student", "gnn"):
        rows = [line for line in out.splitlines() if line.startswith(f"| {stage} |")]
        assert rows and "not trained" not in rows[0], stage
    assert "## harness (prodassoc evaluate)" in out and "| method | NDCG@10 all |" in out
