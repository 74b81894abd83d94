"""What logging training stages live to MLflow costs (issue 14 item 9), on a sqlite store.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mlflow_live_overhead.py [--steps 1000] [--step-ms 20] [--repeat 3] [--chain]

Part 1, per step: ``--steps`` stand-in training steps (torch matmuls of about ``--step-ms``)
each logging what the training loop logs (train_loss, learning_rate, step_examples_per_s) to a
fresh sqlite store, timed against the same steps without logging:

    live        as train_loop does it: training.StepMetrics (at most one point every
                RECORD_EVERY_S, fast steps averaged) into a tracking.LiveRun (buffered, one
                log_batch every FLUSH_SECONDS or 1000 metrics, written by a writer thread)
    LiveRun     every step's metrics into a LiveRun (no averaging)
    sync        one log_batch per step (no buffer)
    async       MLflow's asynchronous log_batch per step (synchronous=False), flushed at the end

Part 2 (``--chain``): the tiny chain (chain.tiny_training_config) on the shipped sample with a
TrainingRun, as ``prodassoc train`` runs it; per stage: its wall time, the time spent in MLflow
calls (run start, params, per-step metrics, summary, end) and the metrics written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prodassoc_core.models import tracking  # noqa: E402


def per_step(steps: int, work_ms: float, repeat: int, root: Path) -> None:
    import torch
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    t0 = time.perf_counter()
    tracking.ensure_store(uri)
    print(f"store created in {time.perf_counter() - t0:.2f} s")
    client = MlflowClient(tracking_uri=uri)
    exp = tracking.experiment_id(uri, "overhead", root / "artifacts")

    # a training step stand-in: torch work of about work_ms (releases the GIL, as training does)
    x = torch.randn(192, 192)
    t0 = time.perf_counter()
    for _ in range(200):
        x @ x
    reps = max(1, round(work_ms / (1000 * (time.perf_counter() - t0) / 200)))

    def step_work() -> None:
        for _ in range(reps):
            x @ x

    def values(step: int) -> dict[str, float]:
        return {"train_loss": 1.0 / step, "learning_rate": 1e-4, "step_examples_per_s": 1000.0 + step}

    def none() -> int:
        for step in range(1, steps + 1):
            step_work()
        return 0

    def live() -> int:  # as train_loop does it
        from prodassoc_core.models import training

        run = tracking.LiveRun.start(uri, "overhead", root / "artifacts", "live")
        with training.recording(run):
            metrics = training.StepMetrics()
            for step in range(1, steps + 1):
                t0 = time.monotonic()
                step_work()
                metrics.update(step, 1.0 / step, 1e-4, 32, time.monotonic() - t0)
            metrics.flush()
        run.end()
        live_runs.append(run.run_id)
        return run.writes

    def live_every_step() -> int:
        run = tracking.LiveRun.start(uri, "overhead", root / "artifacts", "live, every step")
        for step in range(1, steps + 1):
            step_work()
            run.log(step, values(step))
        run.end()
        assert len(client.get_metric_history(run.run_id, "train_loss")) == steps
        return run.writes

    def every_step(synchronous: bool) -> int:
        run_id = client.create_run(exp, run_name=f"every step {synchronous}").info.run_id
        for step in range(1, steps + 1):
            step_work()
            ts = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in values(step).items()],
                             synchronous=synchronous)
        if not synchronous:
            client._tracking_client.store.flush_async_logging()  # the client's store, not the global one
        client.set_terminated(run_id)
        return steps

    live_runs: list[str] = []
    variants = (("no logging", none), ("live (StepMetrics, LiveRun)", live), ("LiveRun, every step", live_every_step),
                ("log_batch every step, sync", lambda: every_step(True)),
                ("log_batch every step, async", lambda: every_step(False)))
    best: dict[str, tuple[float, float, int]] = {}
    for _ in range(repeat):  # interleaved, best of: the machine's other load comes and goes
        for name, fn in variants:
            wall, cpu = time.perf_counter(), time.process_time()
            writes = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            old = best.get(name, (float("inf"), float("inf"), 0))
            best[name] = (min(old[0], wall), min(old[1], cpu), writes)
    base_wall, base_cpu, _ = best["no logging"]
    print(f"{steps} steps of ~{work_ms:g} ms, 3 metrics each; best of {repeat}; CPU = this process, all threads")
    for name, (wall, cpu, writes) in best.items():
        print(f"{name:30s} wall {wall:6.2f} s (+{100 * (wall - base_wall) / base_wall:5.1f}%)  "
              f"CPU {cpu:6.2f} s (+{1000 * (cpu - base_cpu) / steps:6.3f} ms/step, "
              f"+{100 * (cpu - base_cpu) / base_cpu:5.1f}%)  {writes} writes")
    points = len(client.get_metric_history(live_runs[0], "train_loss"))
    print(f"live: {points} points of train_loss for {steps} steps (at most one per "
          f"{training_every_s()} s, fast steps averaged)")


def training_every_s() -> float:
    from prodassoc_core.models import training

    return training.RECORD_EVERY_S


def chain_run(root: Path) -> None:
    from prodassoc_core.data import baskets, importers
    from prodassoc_core.models import chain, training
    from prodassoc_core.ops.settings import BasketConfig

    spent: dict[str, float] = defaultdict(float)
    current = {"run": "-"}

    def timed(name, fn):
        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                spent[getattr(self, "name", current["run"])] += time.perf_counter() - t0
        return wrapper

    for method in ("log", "log_params", "set_tags", "end"):  # what the training thread calls
        setattr(tracking.LiveRun, method, timed(method, getattr(tracking.LiveRun, method)))
    start = tracking.LiveRun.start.__func__
    live: dict[str, tracking.LiveRun] = {}

    def timed_start(cls, tracking_uri, experiment, artifact_root, run_name, **kw):
        t0 = time.perf_counter()
        run = start(cls, tracking_uri, experiment, artifact_root, run_name, **kw)
        spent[run_name] += time.perf_counter() - t0
        live[run_name] = run
        return run

    tracking.LiveRun.start = classmethod(timed_start)

    sample = REPO / "data" / "sample" / "online_retail_sample.parquet"
    lines = importers.online_retail_lines([sample])
    catalog = importers.derive_catalog(lines)
    frame = baskets.baskets(lines, BasketConfig()).collect()
    cfg = chain.tiny_training_config(7)
    uri = f"sqlite:///{root / 'chain.db'}"
    tracking.ensure_store(uri)
    with tracking.TrainingRun(uri, cfg.experiment, root / "artifacts", run_name="train") as tracker:
        result = chain.train_chain(catalog, frame, datetime(2011, 11, 8), cfg, device=training.choose_device("cpu"),
                                   out_dir=root / "chain", progress=False, tracker=tracker)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    print("wall s: the stage's own clock; run s: MLflow's end - start; mlflow s: MLflow calls on the training\n"
          "thread (run start, params, metrics buffered, summary, end); writer s: metric writes in the writer thread")
    print(f"{'stage':8s} {'wall s':>8s} {'run s':>8s} {'mlflow s':>9s} {'share':>7s} {'writer s':>9s} {'writes':>7s}"
          f" {'metrics':>8s}")
    for stage in chain.STAGES:
        run = client.get_run(result.runs[stage])
        name = run.info.run_name
        print(f"{stage:8s} {result.seconds[stage]:8.2f} {(run.info.end_time - run.info.start_time) / 1000:8.2f} "
              f"{spent[name]:9.3f} {100 * spent[name] / result.seconds[stage]:6.2f}% {live[name].write_seconds:9.3f} "
              f"{live[name].writes:7d} {live[name].metrics_logged:8d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--step-ms", type=float, default=20.0, help="the stand-in training step's compute")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant, interleaved (best is shown)")
    parser.add_argument("--chain", action="store_true", help="also train the tiny chain with live runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlflow-overhead-") as tmp:
        per_step(args.steps, args.step_ms, args.repeat, Path(tmp))
        if args.chain:
            chain_run(Path(tmp))


if __name__ == "__main__":
    main()
