"""Training engineering shared by the language-model stages (MLM, fine-tuning, distillation).

* ``choose_device``: the one place the device and precision are chosen (CUDA with bf16
  autocast where the GPU supports it, else CPU in float32); the result is passed in.
* ``set_seed`` / ``derive_seed``: seeds are required. Data order and masks draw from
  generators seeded by ``derive_seed(seed, tag, step)``, so they need no saved state;
  dropout draws from torch's global generator, whose state the checkpoint carries.
* Checkpoints (``save_checkpoint`` / ``load_checkpoint`` / ``latest_checkpoint``) carry
  everything a resume needs: model weights and tokenizer (``save_pretrained``), optimizer,
  scheduler, step, losses, RNG states and the run's resolved config. A checkpoint is
  written to a temporary directory and renamed into place, so a crash mid-write leaves
  the previous one intact. Resuming continues with the same batches, masks and dropout
  as an uninterrupted run (same final weights on the same machine).
* ``Deadline``: a time budget as a point on the monotonic clock, passed down from the chain
  to each stage and from a stage to its parts (data, validation, the loop, checkpoints).
  Budgets measure elapsed time only; nothing here reads the calendar date.
* ``Progress``: a tqdm bar on a terminal, else a log line every N seconds (step/total,
  examples/s, ETA, budget left), so a scheduled run's log shows how far training got.
* ``train_loop``: the optimizer-step loop with progress, periodic checkpoints, and a
  deadline that stops cleanly with a checkpoint (``stop_reason`` "budget").
* ``Distributed`` / ``distributed``: under ``torchrun`` (WORLD_SIZE > 1) the loop trains with
  DistributedDataParallel through Hugging Face Accelerate: every rank builds the step's global
  batch (``batch_at``) and takes its slice (``shard``), gradients are averaged, rank 0 alone
  decides when to stop (the deadline) and writes checkpoints, results and MLflow. Without
  torchrun nothing of this runs: the single-process path is unchanged.
* ``recording`` / ``record``: per-step metrics (loss, learning rate, examples/s, validation)
  go to the sink of the enclosing ``recording`` block, if any (the chain's MLflow stage run,
  ``tracking.LiveRun``, which writes them in batches); without one they go nowhere. Loops
  record training metrics through ``StepMetrics``: at most 4 points a second, fast steps averaged.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from prodassoc_core.data import write_json

logger = logging.getLogger("prodassoc.training")

CHECKPOINT_PREFIX = "step-"
MODEL_SUBDIR = "model"  # save_pretrained output: model + tokenizer
STATE_FILE = "trainer_state.pt"
RUN_CONFIG_FILE = "run_config.json"
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


# --- device and seeds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Where tensors live and which dtype forward passes autocast to (None: full float32)."""

    torch_device: torch.device
    autocast_dtype: torch.dtype | None = None

    @property
    def type(self) -> str:
        return self.torch_device.type

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes: bf16 autocast on a capable GPU, nothing on CPU."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        precision = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        return f"{self.torch_device} ({precision})"


def choose_device(prefer: str | None = None) -> Device:
    """CUDA with bf16 autocast when a GPU is there (float32 if it lacks bf16), else CPU float32.

    ``prefer="cpu"`` forces the CPU; ``prefer="cuda"`` raises when no GPU is visible.
    """
    if prefer not in (None, "cpu", "cuda"):
        raise ValueError(f"prefer must be None, 'cpu' or 'cuda', not {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("prefer='cuda' but torch sees no CUDA device")
    if prefer != "cpu" and torch.cuda.is_available():
        # bf16 keeps float32's exponent range, so no loss scaling is needed.
        if "LOCAL_RANK" in os.environ:  # torchrun: this process's GPU
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
            return Device(torch.device("cuda", int(os.environ["LOCAL_RANK"])), dtype)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return Device(torch.device("cuda"), dtype)
    return Device(torch.device("cpu"), None)


def device_of(cfg) -> Device:
    """The device ``cfg`` (a TrainingConfig) asks for: ``auto`` is CUDA when present, else the CPU."""
    return choose_device(None if cfg.device == "auto" else cfg.device)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). There is no default seed on purpose."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and any labels (stage, step, ...): stable across processes."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU torch generator seeded with ``derive_seed(seed, *parts)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- optimizer and schedule ------------------------------------------------------------------


def adamw(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (fused) with no weight decay on biases and LayerNorm weights (the usual BERT recipe).

    Build it after the model is on its device."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) is ~5x faster than the default on CPU (MiniLM: 20 ms vs 100 ms).
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True)


@dataclass
class Plan:
    """The schedule's length, shared by the scheduler and the loop, which may shorten it once
    the real cost of a step is known (``train_loop``)."""

    total_steps: int


def linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int | Plan, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0 (over a
    ``Plan``'s current length when given one)."""
    plan = total_steps if isinstance(total_steps, Plan) else Plan(total_steps)

    def factor(step: int) -> float:
        total = plan.total_steps
        warmup = int(round(warmup_fraction * total))
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- time budgets and progress ---------------------------------------------------------------


BUDGET = "budget"  # stop_reason of a stage or loop that ran out of time
COMPLETED = "completed"


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which some work must end (``math.inf``: none).

    Made once by the caller (``Deadline.after(seconds)``) and passed down; parts of a stage
    take a slice of it (``fraction``, ``minus``), never a fresh clock of their own."""

    end: float = math.inf

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        return cls(math.inf if seconds is None else time.monotonic() + max(0.0, seconds))

    @classmethod
    def minutes(cls, minutes: float | None) -> "Deadline":
        return cls.after(None if minutes is None else minutes * 60)

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.end)

    def remaining(self) -> float:
        """Seconds left (negative once passed; ``inf`` when unbounded)."""
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def minus(self, seconds: float) -> "Deadline":
        """This deadline moved ``seconds`` earlier (time kept back for what follows)."""
        return Deadline(self.end - seconds)

    def fraction(self, share: float) -> "Deadline":
        """The first ``share`` of the time left (the rest is kept for what follows)."""
        if not self.bounded:
            return self
        return Deadline(time.monotonic() + max(0.0, self.remaining()) * share)

    def earliest(self, other: "Deadline") -> "Deadline":
        return self if self.end <= other.end else other


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class Progress:
    """Progress of one loop: a tqdm bar when ``bar`` (stderr is a terminal), else a log line
    at most every ``every_s`` seconds (and at the end) with step/total, examples/s, ETA and
    the budget left. ``every_s`` 0 logs every update."""

    def __init__(self, desc: str, total: int, *, initial: int = 0, bar: bool, every_s: float,
                 deadline: Deadline | None = None, unit: str = "step", log: logging.Logger | None = None):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.deadline = deadline or Deadline()
        self.log = log or logger
        self.step = self.first = self.logged = initial
        self.examples = 0
        self.started = self.last_line = time.monotonic()
        self.postfix = ""
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
                        disable=not bar)
        self.to_log = not bar

    def update(self, steps: int = 1, examples: int = 0, postfix: str = "") -> None:
        self.step += steps
        self.examples += examples
        self.postfix = postfix
        self.bar.update(steps)
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
        now = time.monotonic()
        if self.to_log and now - self.last_line >= self.every_s:
            self.last_line, self.logged = now, self.step
            self.log.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        done = self.step - self.first
        rate = self.examples / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) * elapsed / done if done else math.inf
        parts = [f"{self.desc}: {self.unit} {self.step}/{self.total} ({100 * self.step / max(1, self.total):.0f}%)",
                 f"{rate:.1f} examples/s", f"eta {format_duration(eta)}"]
        if self.deadline.bounded:
            parts.append(f"budget left {format_duration(self.deadline.remaining())}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        self.bar.close()
        if self.to_log and self.step != self.logged:  # where it ended, unless just logged
            self.log.info("%s", self.line())


# --- several processes (torchrun) ------------------------------------------------------------


def world_size() -> int:
    """Processes training together: torchrun's WORLD_SIZE (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes (checkpoints, results, MLflow, the registry): rank 0, or the only one."""
    return rank() == 0


class Distributed:
    """Training across processes started by ``torchrun`` (one per GPU; gloo on CPU), through
    Hugging Face Accelerate as transformers' ``run_mlm_no_trainer.py`` does: ``prepare`` wraps
    the model in DistributedDataParallel, ``backward`` and ``clip_grad_norm_`` go through the
    Accelerator, bf16 autocast on a capable GPU (``mixed_precision="bf16"``), ``"no"`` on CPU.

    The batches are not a DataLoader: a step's batch is a function of the step
    (``batch_at``), so that a resumed run sees the same batches. Every rank builds the step's
    global batch and keeps its slice (``shard``), which is what a DistributedSampler /
    Accelerate's ``split_batches=True`` would give it; the scheduler is prepared with
    ``split_batches=True`` so it steps once per optimizer step, as in one process.
    ``find_unused_parameters`` where a loop says so (``LoopConfig.unused_parameters``: the
    student, whose loss never uses BERT's pooler and calls the encoder twice a step)."""

    def __init__(self, device: Device):
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

        bf16 = device.type == "cuda" and device.autocast_dtype == torch.bfloat16
        self.accelerator = Accelerator(
            cpu=device.type == "cpu", mixed_precision="bf16" if bf16 else "no",
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            kwargs_handlers=[DistributedDataParallelKwargs()],
        )
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (its decisions: steps that fit, when to stop)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


_DISTRIBUTED: Distributed | None = None


def distributed(device: Device | None = None) -> Distributed | None:
    """This process's ``Distributed`` under torchrun (made on first use), None in one process."""
    global _DISTRIBUTED
    if world_size() <= 1:
        return None
    if _DISTRIBUTED is None:
        _DISTRIBUTED = Distributed(device or choose_device())
    return _DISTRIBUTED


def wait_for_everyone() -> None:
    """A barrier under torchrun (rank 0 has written what the others read next); nothing otherwise."""
    d = distributed()
    if d is not None:
        d.wait()


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank under torchrun; ``value`` otherwise."""
    d = distributed()
    return value if d is None else int(d.broadcast([float(value)])[0])


def shard(batch: "Batch", rank_: int, world: int) -> dict[str, torch.Tensor]:
    """Rank ``rank_``'s contiguous slice (of ``world``) of every tensor's first dimension."""
    return {k: torch.tensor_split(v, world)[rank_] for k, v in batch.items()}


def loss_units(batch: "Batch") -> int:
    """What a batch's loss is the mean over: predicted tokens for token labels (-100 ignored),
    else examples. Used to weight each rank's loss so the averaged gradient is the global batch's."""
    labels = batch.get("labels")
    if labels is not None and labels.dtype == torch.long and labels.dim() > 1:
        return int((labels != -100).sum())
    return batch_examples(batch)


# --- per-step metrics ------------------------------------------------------------------------


class MetricSink(Protocol):
    """Where ``record`` sends metrics (``tracking.LiveRun``: buffered, written in batches)."""

    def log(self, step: int, metrics: Mapping[str, float | int | None]) -> None: ...


_SINK: contextvars.ContextVar[MetricSink | None] = contextvars.ContextVar("metric_sink", default=None)


@contextlib.contextmanager
def recording(sink: MetricSink | None) -> Iterator[MetricSink | None]:
    """Metrics ``record``-ed inside this block (in this thread or task) go to ``sink``."""
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def record(step: int, metrics: Mapping[str, float | int | None]) -> None:
    """Send ``metrics`` at ``step`` to the enclosing ``recording`` block's sink (none: dropped)."""
    sink = _SINK.get()
    if sink is not None:
        sink.log(step, metrics)


def recording_active() -> bool:
    return _SINK.get() is not None


RECORD_EVERY_S = 0.25  # the most often a loop records its training metrics (StepMetrics)


class StepMetrics:
    """A loop's training metrics, ``record``-ed at most every ``every_s`` seconds of wall time:
    ``train_loss`` (the mean over the steps since the last point), ``learning_rate`` (the last
    step's) and ``step_<unit>_per_s`` (over those steps' compute time), at the last step. Steps
    slower than ``every_s`` are each a point; fast steps are averaged, so the points written
    per second (and what writing them costs) do not grow with the step rate. Does nothing
    outside a ``recording`` block."""

    def __init__(self, unit: str = "examples", every_s: float = RECORD_EVERY_S):
        self.active = recording_active()
        self.rate_key, self.every_s = f"step_{unit}_per_s", every_s
        self._start(time.monotonic())

    def _start(self, now: float) -> None:
        self.since, self.steps, self.loss_sum, self.count, self.seconds = now, 0, 0.0, 0, 0.0
        self.step, self.learning_rate = 0, 0.0

    def update(self, step: int, loss: float, learning_rate: float, count: int, seconds: float) -> None:
        """One optimizer step: its number, loss, learning rate, examples (or pairs) and compute seconds."""
        if not self.active:
            return
        self.steps += 1
        self.loss_sum += loss
        self.count += count
        self.seconds += seconds
        self.step, self.learning_rate = step, learning_rate
        now = time.monotonic()
        if now - self.since >= self.every_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Record what is pending (the loop calls it when it ends)."""
        if self.active and self.steps:
            record(self.step, {"train_loss": self.loss_sum / self.steps, "learning_rate": self.learning_rate,
                               self.rate_key: throughput(self.count, self.seconds)})
        self._start(time.monotonic() if now is None else now)


# --- checkpoints -----------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint.

    ``losses`` holds the training loss of every optimizer step done so far (index = step - 1);
    ``extra`` holds a stage's own values that a resume must not recompute (e.g. the held-out
    loss measured before training).
    """

    total_steps: int
    step: int = 0
    examples: int = 0
    train_seconds: float = 0.0
    tokens: int = 0  # token positions fed to the model (padding included): what its FLOPs are spent on
    losses: list[float] = field(default_factory=list)
    stop_reason: str | None = None  # "completed" | "budget"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: Path,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    run_config: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and keep the newest ``keep`` checkpoints.

    Layout: ``model/`` (``save_pretrained`` of model and tokenizer), ``trainer_state.pt``
    (optimizer, scheduler, TrainState, RNG states), ``run_config.json`` (the resolved config).
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"{CHECKPOINT_PREFIX}{state.step:08d}"
    target, tmp = root / name, root / f".tmp-{name}-{os.getpid()}"
    with quiet_transformers():
        model.save_pretrained(tmp / MODEL_SUBDIR)
        tokenizer.save_pretrained(tmp / MODEL_SUBDIR)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "rng": rng_state(),
        },
        tmp / STATE_FILE,
    )
    (tmp / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2, sort_keys=True, default=str))
    if target.exists():  # the same step saved again (a rerun): replace it
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without progress bars and below-error logs, restored afterwards: no
    "Writing model shards" bar per checkpoint, and load reports are summarised by the caller."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def read_run_config(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / RUN_CONFIG_FILE).read_text())


def load_checkpoint(
    checkpoint: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    restore_rng: bool = True,
) -> TrainState:
    """Load weights, optimizer, scheduler and (by default) every RNG state; return the TrainState.

    ``model`` must have the checkpoint's architecture; its weights are replaced.
    """
    with quiet_transformers():
        saved = type(model).from_pretrained(checkpoint / MODEL_SUBDIR)
    model.load_state_dict(saved.state_dict())
    del saved
    payload = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return TrainState(**payload["state"])


# --- the loop --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    checkpoint_every: int = 500
    grad_clip: float | None = 1.0
    progress: bool = True  # a tqdm bar (stderr is a terminal); else log lines
    progress_seconds: float = 30.0  # seconds between progress log lines without a bar
    unused_parameters: bool = False  # DDP only: the model has parameters the loss does not use (BERT's pooler)


Batch = Mapping[str, torch.Tensor]


def hf_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The loss a Hugging Face model computes itself when the batch holds ``labels``."""
    return model(**batch).loss


def batch_examples(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


def batch_tokens(batch: Batch) -> int:
    """Token positions a batch feeds the encoder (every ``*input_ids`` tensor, padding included)."""
    return sum(int(v.numel()) for k, v in batch.items() if k.endswith("input_ids"))


def reset_peak_memory(device: Device) -> None:
    """Start a stage's peak-memory count (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device.torch_device)


def peak_memory(device: Device) -> int | None:
    """Bytes of GPU memory allocated at most since ``reset_peak_memory`` (None on the CPU)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device.torch_device))


REFIT_AFTER = 5  # steps of a call after which the schedule is checked against the deadline


def _save_guess(model: torch.nn.Module) -> float:
    """Seconds a checkpoint takes, before any was timed: weights and two AdamW moments (12 bytes a
    float32 parameter) written at ~200 MB/s."""
    return 12 * sum(p.numel() for p in model.parameters()) / 200e6


@dataclass
class _Pace:
    """What this call's steps cost, and the two decisions both loops take from it: shorten
    the schedule (once, after ``REFIT_AFTER`` steps) and stop (completed, or out of time)."""

    steps: int = 0
    seconds: float = 0.0
    save_s: float = 0.0  # time kept for the checkpoint at the deadline: the last save's, or a guess

    @classmethod
    def of(cls, model: torch.nn.Module) -> _Pace:
        return cls(save_s=_save_guess(model))

    def took(self, state: TrainState, examples: int, tokens: int, seconds: float) -> None:
        state.step += 1
        state.examples += examples
        state.tokens += tokens
        state.train_seconds += seconds
        self.steps += 1
        self.seconds += seconds

    def refit(self, step: int, total: int, deadline: Deadline, plan: Plan | None, desc: str) -> int:
        """The schedule's length: ``total``, or what the steps' real cost fits before the deadline."""
        if plan is None or self.steps != REFIT_AFTER or not deadline.bounded:
            return total
        fits = step + int(0.9 * max(0.0, deadline.remaining() - self.save_s) * self.steps / self.seconds)
        if fits >= total:
            return total
        logger.info("%s: schedule shortened to %d steps (%.2f s a step, %.0f s left)", desc, max(fits, step),
                    self.seconds / self.steps, deadline.remaining())
        return max(fits, step)

    def stop(self, step: int, total: int, deadline: Deadline) -> str | None:
        if step >= total:
            return COMPLETED
        if deadline.remaining() < self.seconds / self.steps + self.save_s:
            return BUDGET
        return None

    def saving(self, save: Callable[[], Any]) -> None:
        t1 = time.monotonic()
        save()
        self.save_s = time.monotonic() - t1


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_at: Callable[[int], Batch],
    *,
    device: Device,
    cfg: LoopConfig,
    state: TrainState,
    save: Callable[[TrainState], Path],
    deadline: Deadline | None = None,
    plan: Plan | None = None,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = hf_loss,
    on_step: Callable[[TrainState], None] | None = None,
    desc: str = "train",
) -> TrainState:
    """Run optimizer steps ``state.step + 1 .. cfg.total_steps``; return the updated state.

    ``batch_at(step)`` gives the (CPU) batch of a 0-based step, so a resumed run sees the
    same batches. A checkpoint (``save(state)``) is written every ``cfg.checkpoint_every``
    steps and at the end. ``deadline`` is when the loop must be done, its last checkpoint
    written: it stops (``stop_reason`` "budget") once the time left would not cover another
    step and the checkpoint, and always after at least one step, so every call makes progress.
    With a ``plan`` (the scheduler's), the schedule is shortened after ``REFIT_AFTER`` steps
    when the steps' real cost says it cannot be done by the deadline (the estimate before
    training, ``fit_schedule``, has no optimizer step and no load from other processes).
    ``on_step(state)`` runs after each step and its checkpoint (tests use it to kill a run).

    Under torchrun (``distributed``) the steps are DistributedDataParallel ones
    (``_train_loop_ddp``): the same schedule over the same global batches.
    """
    d = distributed(device)
    if d is not None:
        return _train_loop_ddp(d, model, optimizer, scheduler, batch_at, device=device, cfg=cfg, state=state,
                               save=save, deadline=deadline or Deadline(), plan=plan, loss_fn=loss_fn,
                               on_step=on_step, desc=desc)
    model.train()
    deadline = deadline or Deadline()
    pace = _Pace.of(model)
    state.stop_reason = None if state.step < cfg.total_steps else COMPLETED
    progress = Progress(desc, cfg.total_steps, initial=state.step, bar=cfg.progress, every_s=cfg.progress_seconds,
                        deadline=deadline)
    metrics = StepMetrics()
    try:
        while state.stop_reason is None:
            t0 = time.monotonic()
            cpu_batch = batch_at(state.step)
            tokens = batch_tokens(cpu_batch)
            batch = {k: v.to(device.torch_device, non_blocking=True) for k, v in cpu_batch.items()}
            with device.autocast():
                loss = loss_fn(model, batch)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step is taken with
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.losses.append(float(loss.detach()))  # syncs with the device, so the timing is real
            step_s = time.monotonic() - t0

            n = batch_examples(batch)
            pace.took(state, n, tokens, step_s)
            progress.update(1, n, f"loss {state.losses[-1]:.3f}")
            metrics.update(state.step, state.losses[-1], learning_rate, n, step_s)
            total = pace.refit(state.step, state.total_steps, deadline, plan, desc)
            if total != state.total_steps:
                state.total_steps = plan.total_steps = total
                progress.total = progress.bar.total = total
            state.stop_reason = pace.stop(state.step, state.total_steps, deadline)
            if state.stop_reason or state.step % cfg.checkpoint_every == 0:
                pace.saving(lambda: save(state))
            if on_step is not None:
                on_step(state)
    finally:
        progress.close()
        metrics.flush()
    if state.stop_reason == BUDGET:
        logger.info("%s: out of time budget at step %d of %d scheduled (%.0f%%); checkpoint saved",
                    desc, state.step, cfg.total_steps, 100 * state.step / max(1, cfg.total_steps))
    return state


RANK_RNG = "rank_rng"  # TrainState.extra key of a DDP checkpoint: every rank's RNG states (dropout)
_STOP_CODES = {None: 0, COMPLETED: 1, BUDGET: 2}


def _train_loop_ddp(
    d: Distributed, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, batch_at: Callable[[int], Batch], *, device: Device,
    cfg: LoopConfig, state: TrainState, save: Callable[[TrainState], Path], deadline: Deadline, plan: Plan | None,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor], on_step: Callable[[TrainState], None] | None,
    desc: str,
) -> TrainState:
    """``train_loop`` on one of ``d.world`` ranks.

    Each step every rank builds the global batch ``batch_at(step)`` and keeps its slice
    (``shard``; a ``batch_at`` with ``shards_itself`` returns the slice itself). A rank's loss
    is weighted by its share of the global batch's loss units (``loss_units``: predicted
    tokens, or examples) times the world size, so DDP's mean of the gradients is the gradient
    of the global batch's mean loss: the one-process step, up to float summation order. The
    recorded loss is the global one (an all-reduce). Rank 0 alone decides whether the schedule
    is shortened and when to stop (its deadline) and broadcasts it, so no rank waits in a
    collective another has left; rank 0 alone writes checkpoints, with every rank's RNG state
    (dropout) in it (``RANK_RNG``), so a resume on as many ranks continues every stream."""
    acc = d.accelerator
    acc.ddp_handler.find_unused_parameters = cfg.unused_parameters
    ddp_model, ddp_optimizer, ddp_scheduler = acc.prepare(model, optimizer, scheduler)
    ddp_model.train()
    saved_rngs = state.extra.pop(RANK_RNG, None)
    if saved_rngs is not None and len(saved_rngs) == d.world:
        set_rng_state(saved_rngs[d.rank])  # rank 0's is also the checkpoint's own "rng"
    elif d.rank > 0 and state.step == 0:  # a dropout stream of its own, derived from the training seed
        torch.manual_seed(derive_seed(torch.initial_seed(), "rank", d.rank))
    shards_itself = bool(getattr(batch_at, "shards_itself", False))
    pace = _Pace.of(model)
    state.stop_reason = None if state.step < cfg.total_steps else COMPLETED
    progress = Progress(desc, cfg.total_steps, initial=state.step, bar=cfg.progress and d.is_main,
                        every_s=cfg.progress_seconds if d.is_main else math.inf, deadline=deadline)
    try:
        while state.stop_reason is None:
            t0 = time.monotonic()
            batch = batch_at(state.step)
            tokens = batch_tokens(batch)
            if shards_itself:
                units = d.sum([float(loss_units(batch))])[0]
            else:
                units = float(loss_units(batch))
                batch = shard(batch, d.rank, d.world)
            batch = {k: v.to(device.torch_device, non_blocking=True) for k, v in batch.items()}
            local = loss_units(batch)
            weight = local * d.world / max(units, 1.0)
            with device.autocast():
                loss = loss_fn(ddp_model, batch)
            if local == 0:  # nothing to predict in this rank's slice: it adds no gradient
                loss = torch.nan_to_num(loss)
            acc.backward(loss * weight)
            if cfg.grad_clip is not None:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            learning_rate = optimizer.param_groups[0]["lr"]
            ddp_optimizer.step()
            ddp_scheduler.step()
            ddp_optimizer.zero_grad(set_to_none=True)
            loss_sum, n, summed = d.sum([float(loss.detach()) * weight, float(batch_examples(batch)), float(tokens)])
            tokens = int(summed) if shards_itself else tokens  # the global batch's tokens
            state.losses.append(loss_sum / d.world)
            step_s = time.monotonic() - t0

            n = int(n)
            pace.took(state, n, tokens, step_s)
            progress.update(1, n, f"loss {state.losses[-1]:.3f}")
            record(state.step, {"train_loss": state.losses[-1], "learning_rate": learning_rate,
                                "step_examples_per_s": throughput(n, step_s)})
            # Rank 0 decides (its clock and deadline) and every rank follows.
            total, stop = state.total_steps, None
            if d.is_main:
                total = pace.refit(state.step, total, deadline, plan, desc)
                stop = pace.stop(state.step, total, deadline)
            code, total = d.broadcast([float(_STOP_CODES[stop]), float(total)])
            stop = {v: k for k, v in _STOP_CODES.items()}[int(code)]
            if int(total) != state.total_steps:
                state.total_steps = int(total)
                if plan is not None:
                    plan.total_steps = state.total_steps
                progress.total = progress.bar.total = state.total_steps
            state.stop_reason = stop
            if state.stop_reason or state.step % cfg.checkpoint_every == 0:
                rngs = d.gather(rng_state())
                if d.is_main:
                    state.extra[RANK_RNG] = rngs
                    try:
                        pace.saving(lambda: save(state))
                    finally:
                        state.extra.pop(RANK_RNG, None)
                d.wait()  # the checkpoint is complete before any rank goes on (or stops)
            if on_step is not None:
                on_step(state)
    finally:
        progress.close()
        acc.free_memory()  # drop the DDP wrapper; ``model`` is the trained module
    if state.stop_reason == BUDGET:
        logger.info("%s: out of time budget at step %d of %d scheduled (%.0f%%); checkpoint saved",
                    desc, state.step, cfg.total_steps, 100 * state.step / max(1, cfg.total_steps))
    return state


def throughput(examples: int, seconds: float) -> float:
    return examples / seconds if seconds > 0 else 0.0


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], checkpoint: Path, may_differ: set[str]) -> None:
    """Raise when a checkpoint's run config differs from this run's outside ``may_differ``
    (dotted keys of settings a resume may change, such as the time budget)."""
    a, b = flatten(saved), flatten(current)
    diff = sorted(k for k in set(a) | set(b) if k not in may_differ and a.get(k) != b.get(k))
    if diff:
        raise ValueError(
            f"{checkpoint} was written by a different run ({', '.join(diff)} differ); "
            "use a new output directory or remove the checkpoints"
        )


@dataclass
class StageResult:
    """What a fine-tuning stage (teacher, student) reports: validation metrics before and
    after, the loop's progress and where the model was saved."""

    stage: str
    before: dict[str, float]
    after: dict[str, float]
    steps: int
    total_steps: int
    stop_reason: str
    examples_per_s: float  # this call's training steps only
    train_seconds: float  # all calls, resumed ones included
    model_dir: Path
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    train_losses: list[float] = field(default_factory=list, repr=False)
    budget_seconds: float | None = None  # the stage's budget (None: unbounded)
    seconds: float = 0.0  # wall time of the stage in this call: data, validation, loop, saving
    scheduled_steps: int | None = None  # the schedule's length when the budget shortened it (fit_schedule)
    tokens_per_s: float = 0.0  # token positions a second, this call's training steps only (padding included)
    parameters: int = 0  # the trained model's parameters (MFU: 6 x parameters x tokens/s)
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated during the stage (None: CPU)
    world_size: int = 1  # processes that trained it (torchrun)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "train_losses"}
        return json.loads(json.dumps(out, default=str))


def saved_total_steps(checkpoint: Path) -> int:
    """The schedule length a checkpoint's run trains to (``TrainState.total_steps``)."""
    payload = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    return int(payload["state"]["total_steps"])


def fit_schedule(
    model: torch.nn.Module, batch_at: Callable[[int], Batch], loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    *, device: Device, planned: int, deadline: Deadline, desc: str,
) -> int:
    """How many steps the learning-rate schedule spans: ``planned``, or as many as fit before
    ``deadline`` when fewer do, so that a run cut short by its budget still warms up and
    decays instead of stopping inside its warm-up.

    The cost of a step is measured on a forward and backward pass of the first batch, after one
    untimed pass that takes the one-off costs (CUDA context and kernels, allocator, the first
    collation: on an H200 the first pass took about 5x a training step, 0.20 s against 0.038 s
    for the teacher, and the schedules were cut to about a fifth of what fitted). Gradients
    are dropped and weights untouched; run it before seeding the training's dropout.
    90 % of the time left, less the final checkpoint, is planned. Unbounded: ``planned``.
    Under torchrun every rank gets rank 0's answer."""
    if not deadline.bounded:
        return planned
    return broadcast_int(_fit_schedule(model, batch_at, loss_fn, device=device, planned=planned, deadline=deadline,
                                       desc=desc))


def _fit_schedule(
    model: torch.nn.Module, batch_at: Callable[[int], Batch], loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    *, device: Device, planned: int, deadline: Deadline, desc: str,
) -> int:
    model.train()
    _timed_pass(model, batch_at, loss_fn, device)  # warm-up: CUDA context, kernels, allocator, first collation
    step_s = _timed_pass(model, batch_at, loss_fn, device)
    save_s = _save_guess(model)
    fits = max(1, int(0.9 * max(0.0, deadline.remaining() - save_s) / max(step_s, 1e-6)))
    if fits >= planned:
        return planned
    logger.info("%s: schedule fitted to the budget: %d of %d planned steps (%.2f s a step, %.0f s left)",
                desc, fits, planned, step_s, deadline.remaining())
    return fits


def _timed_pass(
    model: torch.nn.Module, batch_at: Callable[[int], Batch], loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    device: Device,
) -> float:
    """Seconds of one forward and backward pass of the first batch, its gradients dropped."""
    t0 = time.monotonic()
    batch = {k: v.to(device.torch_device) for k, v in batch_at(0).items()}
    with device.autocast():
        loss = loss_fn(model, batch)
    loss.backward()
    float(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize(device.torch_device)  # the backward's kernels, not only the loss's
    model.zero_grad(set_to_none=True)
    return time.monotonic() - t0


def time_reserve(eval_seconds: float) -> float:
    """Seconds kept back from a loop's deadline for what follows it: the validation after
    training (as long as the one before, on the same sample; +25 % for noise) and saving."""
    return 1.25 * eval_seconds + 1.0


def run_stage(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    stage: str,
    out_dir: Path,
    run_config: Mapping[str, Any],
    may_differ: set[str],
    total: int,
    learning_rate: float,
    weight_decay: float,
    warmup_fraction: float,
    loop: LoopConfig,
    batch_at: Callable[[int], Batch],
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    device: Device,
    seed: int,
    deadline: Deadline | None = None,
    started: float | None = None,
    on_step: Callable[[TrainState], None] | None = None,
) -> StageResult:
    """Train ``model`` with AdamW + linear schedule through ``train_loop``, resuming from the
    newest checkpoint in ``out_dir/checkpoints``; ``evaluate()`` runs before (first start
    only, kept in the checkpoint) and after, on the same sample. Saves ``out_dir/model`` and
    ``out_dir/<stage>_results.json``.

    ``deadline`` bounds all of it: the schedule is fitted to it (``fit_schedule``) and the
    loop stops early enough to leave time for the validation after it (measured by the one
    before) and the final save. ``stop_reason`` is "budget" when fewer than ``total`` steps
    were done. ``started`` is the monotonic time the stage began (its data preparation
    included), for ``seconds``."""
    started = time.monotonic() if started is None else started
    deadline = deadline or Deadline()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = out_dir / "checkpoints"
    model.to(device.torch_device)
    reset_peak_memory(device)
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        check_resumable(read_run_config(latest), run_config, latest, may_differ)
        scheduled = saved_total_steps(latest)  # a resumed run keeps the schedule it started with
    else:
        t0 = time.monotonic()
        before = evaluate()
        eval_s = time.monotonic() - t0
        logger.info("%s: before training %s (%.1f s)", stage, before, eval_s)
        record(0, before)
        scheduled = fit_schedule(model, batch_at, loss_fn, device=device, planned=total,
                                 deadline=deadline.minus(time_reserve(eval_s)), desc=stage)
        set_seed(derive_seed(seed, stage, "train"))
    optimizer = adamw(model, learning_rate, weight_decay)
    plan = Plan(scheduled)
    scheduler = linear_schedule(optimizer, plan, warmup_fraction)
    if latest is not None:
        state = load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        model.to(device.torch_device)
        resumed_from: int | None = state.step
        logger.info("%s: resuming from %s (step %d/%d)", stage, latest, state.step, scheduled)
    else:
        state = TrainState(total_steps=scheduled, extra={"before": before, "eval_seconds": eval_s})
        resumed_from = None
    loop = dataclasses.replace(loop, total_steps=scheduled)
    examples_before, seconds_before, tokens_before = state.examples, state.train_seconds, state.tokens

    def save(s: TrainState) -> Path:
        return save_checkpoint(
            ckpt_root, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
            state=s, run_config=run_config, keep=2,
        )

    state = train_loop(
        model, optimizer, scheduler, batch_at, device=device, cfg=loop, state=state, save=save,
        deadline=deadline.minus(time_reserve(state.extra.get("eval_seconds", 0.0))), plan=plan, loss_fn=loss_fn,
        on_step=on_step, desc=stage,
    )
    scheduled = state.total_steps
    after = evaluate()
    record(state.step, after)
    model_dir = out_dir / MODEL_SUBDIR
    if is_main_process():  # under torchrun rank 0 writes, the others wait for it
        with quiet_transformers():
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    result = StageResult(
        stage=stage, before=state.extra["before"], after=after, steps=state.step, total_steps=total,
        stop_reason=COMPLETED if state.step >= total else BUDGET,
        scheduled_steps=scheduled if scheduled < total else None,
        examples_per_s=throughput(state.examples - examples_before, state.train_seconds - seconds_before),
        train_seconds=state.train_seconds, model_dir=model_dir, resumed_from=resumed_from,
        train_losses=list(state.losses), budget_seconds=_budget_of(deadline, started),
        seconds=time.monotonic() - started,
        tokens_per_s=throughput(state.tokens - tokens_before, state.train_seconds - seconds_before),
        parameters=sum(p.numel() for p in model.parameters()), peak_memory_bytes=peak_memory(device),
        world_size=world_size(),
    )
    if is_main_process():
        write_json(out_dir / f"{stage}_results.json", result.summary())
    wait_for_everyone()
    logger.info("%s: %s -> %s, %d/%d steps (%s), %.1f examples/s, %s", stage, result.before, after, state.step, total,
                result.stop_reason, result.examples_per_s, budget_note(result.seconds, result.budget_seconds))
    return result


def _budget_of(deadline: Deadline, started: float) -> float | None:
    return deadline.end - started if deadline.bounded else None


def budget_note(seconds: float, budget: float | None) -> str:
    """"12.3 s of a 30.0 s budget" (or "12.3 s, no budget")."""
    return f"{seconds:.1f} s of a {budget:.1f} s budget" if budget is not None else f"{seconds:.1f} s, no budget"
