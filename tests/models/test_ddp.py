"""Training under torchrun (issue 15 item 4): two CPU processes on the gloo backend.

tests/models/ddp_worker.py runs the same tiny MLM runs under ``torchrun --nproc_per_node=2`` and,
for the one-process reference, in this test's process while torchrun's ranks run. Checked:

- Same global batch and seed, no dropout: the per-step training loss of the DDP run matches the
  one-process run to a relative 1e-5 at every one of the 16 steps. Each rank takes half of the
  step's global batch and weights its loss by its share of the masked tokens, and DDP averages
  the gradients, so the update is the global batch's gradient: the same arithmetic up to float
  summation order (two half-batch sums then an all-reduce, instead of one sum), which moves the
  float32 losses by ~1e-7 relative (observed 1.6e-7 after 16 steps). With dropout the runs differ
  by design (each rank draws its own masks), so that comparison is dropout-free.
- Resume from a DDP checkpoint: a run stopped after 8 steps (its checkpoint, written by rank 0
  with every rank's RNG state) and resumed gives exactly the uninterrupted run's losses and
  held-out loss, dropout included (tolerance 0: same ranks, same reduction order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

WORKER = REPO / "tests" / "models" / "ddp_worker.py"
RTOL = 1e-5  # DDP vs one process, per step (float32 summation order; observed ~1.6e-7)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
                  "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    """(the one-process reference's losses, the DDP run's): the reference runs here (no WORLD_SIZE
    in this process) while torchrun's two ranks run theirs."""
    import ddp_worker

    one, ddp = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("ddp")
    log = ddp.with_name(f"{ddp.name}.log")  # a file, not a pipe: nothing reads while the reference runs
    with open(log, "w") as out:
        launched = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
             str(ddp)], env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        assert not {"WORLD_SIZE", "RANK", "LOCAL_RANK"} & set(os.environ)
        ddp_worker.main(one, reference=True)
        launched.wait(timeout=180)
    finally:
        launched.kill()
        launched.wait()
    assert launched.returncode == 0, log.read_text()[-4000:]
    return json.loads((one / "losses.json").read_text()), json.loads((ddp / "losses.json").read_text())


def test_ddp_loss_matches_one_process(runs):
    one, ddp = runs
    assert one["world_size"] == 1 and ddp["world_size"] == 2
    assert len(one["compare"]) == len(ddp["compare"]) == 16
    for step, (a, b) in enumerate(zip(one["compare"], ddp["compare"]), start=1):
        assert b == pytest.approx(a, rel=RTOL), f"step {step}"
    assert ddp["loss_after"]["compare"] == pytest.approx(one["loss_after"]["compare"], rel=RTOL)


def test_ddp_resume_continues_exactly(runs):
    _, ddp = runs
    assert ddp["resumed_from"] == 8
    assert ddp["resumed"] == ddp["full"]  # losses of steps 1-8 come from the checkpoint, 9-16 from the resume
    assert ddp["loss_after"]["resumed"] == ddp["loss_after"]["full"]
    assert ddp["checkpoint_writers"] == ["step-00000008", "step-00000016"]  # written once, by rank 0
