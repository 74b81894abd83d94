"""What one training run did, as a plain summary and as a Markdown page (pure: no I/O, no Prefect).

The training flow (flows/train.py) logs ``verdict`` and records ``training_markdown`` as the
Prefect artifact ``train-<as_of>``; every stage's params, metrics and model are already MLflow
runs of their own (prodassoc_core/pipeline/retrain.py), so nothing here is logged there again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from prodassoc_core.ops import MlmConfig, TrainingConfig

if TYPE_CHECKING:  # retrain imports torch; formatting a report does not need it
    from prodassoc_core.pipeline.retrain import TrainReport

STAGES = ("mlm", "teacher", "student", "gnn")


def artifact_key(as_of: date) -> str:
    """``train-2011-11-08`` (Prefect artifact keys: lowercase letters, digits and dashes)."""
    return f"train-{as_of.isoformat()}"


def registered_names(cfg: TrainingConfig) -> dict[str, str]:
    """Stage -> registered model name. The MLM stage registers under MlmConfig's default name
    (chain.mlm_config); teacher and student under their configured names."""
    return {
        "mlm": MlmConfig.model_fields["registered_model"].default,
        "teacher": cfg.teacher.registered_model,
        "student": cfg.student.registered_model,
        "gnn": cfg.gnn_registered_model,
    }


def verdict(report: TrainReport, cfg: TrainingConfig) -> str:
    """One sentence: is the new student served from now on (champion) or not, and why."""
    names, d, alias = registered_names(cfg), report.decision, cfg.champion_alias
    student = f"{names['student']} v{report.versions['student']}"
    served = ", ".join(s for s, v in d.segments.items() if v == "hybrid")
    if d.promoted:
        others = ", ".join(f"{names[s]} v{report.versions[s]}" for s in STAGES if s != "student" and s in report.versions)
        return f"new champion: {student} is now @{alias} (with {others}), served for {served} products; {d.reason}"
    now = f"v{d.champion_version} stays served" if d.champion_version else "the classic method stays served"
    kind = "trial run, not promoted" if d.trial else "kept as a candidate"
    return f"{kind}: {student} is registered, {now}; {d.reason}"


def gate_table(report: TrainReport) -> list[str]:
    """The gate's scores as Markdown table lines: NDCG@k per segment of the classic method, the
    candidate's hybrid and the model served before, and the segments' decision."""
    d = report.decision
    lines = ["| ranking | warm | cold | served |", "|---|---:|---:|---:|"]
    names = {"classic": f"classic {d.classic}", "candidate": f"candidate v{report.versions['student']} (hybrid)",
             "champion": f"served before: v{d.champion_version}"}
    for who in ("classic", "candidate", "champion"):
        if who in d.scores:
            v = d.scores[who]
            lines.append(f"| {names[who]} | {v['warm']:.4f} | {v['cold']:.4f} | {v['served']:.4f} |")
    lines.append(f"| gate products | {d.n_products['warm']} | {d.n_products['cold']} | "
                 f"{d.n_products['warm'] + d.n_products['cold']} |")
    lines.append(f"| decision | {d.segments['warm']} | {d.segments['cold']} | "
                 f"{'promoted' if d.promoted else ('trial' if d.trial else 'not promoted')} |")
    return lines


def summary(report: TrainReport, cfg: TrainingConfig) -> dict[str, Any]:
    """The run as plain values (the flow's return value and the CLI's output)."""
    names, d = registered_names(cfg), report.decision
    return {
        "as_of": report.as_of.isoformat(),
        "versions": dict(report.versions),
        "model_uris": {s: f"models:/{names[s]}/{v}" for s, v in report.versions.items()},
        "promoted": d.promoted,
        "trial": d.trial,
        "segments": dict(d.segments),
        "gate_scores": {k: dict(v) for k, v in d.scores.items()},
        "gate_products": dict(d.n_products),
        "classic": d.classic,
        "candidate_score": d.candidate_score,
        "champion_score": d.champion_score,
        "champion_version": d.champion_version,
        "message": d.message,
        "verdict": verdict(report, cfg),
        "gate_table": gate_table(report),
        "seconds": dict(report.seconds),
        "chain": report.chain,
    }


def _value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _metrics(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_value(v)}" for k, v in values.items()) or "–"


def _validation(stage: str, s: Mapping[str, Any]) -> tuple[str, str]:
    """(before, after) validation metrics of a stage summary."""
    if stage == "mlm":  # MlmResult: held-out masked-token loss and perplexity
        return (_metrics({"loss": s["loss_before"], "ppl": s["ppl_before"]}),
                _metrics({"loss": s["loss_after"], "ppl": s["ppl_after"]}))
    return _metrics(s.get("before", {})), _metrics(s.get("after", {}))


def training_markdown(
    report: TrainReport, cfg: TrainingConfig, tracking: str, total_seconds: float | None = None
) -> str:
    """The run's page: the gate's verdict and scores, registered versions, and per stage the wall
    seconds, examples/s, steps, stop reason and validation before/after. ``tracking`` says where
    MLflow has the stage runs."""
    names, d, chain = registered_names(cfg), report.decision, report.chain
    lines = [
        f"# prodassoc training, as_of {report.as_of.isoformat()}",
        "",
        f"**{verdict(report, cfg)}.**",
        "",
        f"MLflow: {tracking}.",
        "",
        "## Registered versions",
        "",
        "| stage | model | version | URI |",
        "|---|---|---:|---|",
    ]
    versions = report.versions
    lines += [f"| {s} | {names[s]} | {versions[s]} | `models:/{names[s]}/{versions[s]}` |" for s in STAGES
              if s in versions]
    lines += [
        "",
        "## Serving gate (NDCG@10 on the gate half of the held-out tail of the training window)",
        "",
        *gate_table(report),
        "",
        d.message + ".",
        "",
        "## Stages",
        "",
        "| stage | wall s | train s | examples/s | steps | stop reason | validation before | validation after |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    seconds = report.seconds
    for stage in ("mlm", "pairs", "teacher", "student", "gnn"):
        wall = f"{seconds[stage]:.2f}" if stage in seconds else "–"
        s = chain.get(stage)
        if stage == "gnn" and isinstance(s, Mapping):  # GnnResult: epochs, scored pairs per second
            before, after = _metrics(s.get("before", {})), _metrics(s.get("after", {}))
            lines.append(
                f"| gnn | {wall} | {s['train_seconds']:.2f} | {s['edges_per_s']:,.0f} pairs/s | "
                f"{s['epochs']} epochs (best {s['best_epoch']}) | {s['stop_reason']} | {before} | {after} |"
            )
            continue
        if not isinstance(s, Mapping) or "steps" not in s:  # pairs: building the task, no training
            lines.append(f"| {stage} | {wall} | – | – | – | – | – | – |")
            continue
        before, after = _validation(stage, s)
        resumed = f", resumed at {s['resumed_from']}" if s.get("resumed_from") is not None else ""
        lines.append(
            f"| {stage} | {wall} | {s['train_seconds']:.2f} | {s['examples_per_s']:,.1f} | "
            f"{s['steps']:,}/{s['total_steps']:,} | {s['stop_reason']}{resumed} | {before} | {after} |"
        )
    if total_seconds is not None:
        lines += ["", f"Whole run (data, chain, registration, gate): {total_seconds:.2f} wall seconds."]
    if isinstance(chain.get("hybrid_weights"), Mapping) and chain["hybrid_weights"]:
        w = chain["hybrid_weights"]
        lines += ["", "Hybrid weights (tuned on the held-out tail): warm " + _metrics(w["warm"]) + "; cold "
                  + _metrics(w["cold"]) + "."]
    if isinstance(chain.get("task"), Mapping):
        lines += ["", "Pair task: " + _metrics(chain["task"]) + "."]
    return "\n".join(lines) + "\n"
