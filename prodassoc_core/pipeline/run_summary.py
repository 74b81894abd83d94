"""What one nightly run did, as flat metrics and as a Markdown page (pure: no I/O, no Prefect).

The nightly flow records both: the Markdown as a Prefect artifact (``nightly-<as_of>``), the
metrics as one MLflow run in experiment ``prodassoc-nightly``. Counts come from the ingestion
report and the published partitions the flow already returns; timings are wall seconds per stage.
What was served comes from the run's serving plan (prodassoc_core/models/serving.py, ``serving.json``):
the classic setting chosen for the catalog and, per segment, the hybrid's model versions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prodassoc_core.data import CATALOG, TRANSACTIONS
from prodassoc_core.ops import AssociationConfig, MiningConfig

NIGHTLY_EXPERIMENT = "prodassoc-nightly"

_FILE_COUNTS = ("files_seen", "files_ingested", "files_skipped", "files_failed", "files_duplicate", "files_deferred")
_ROW_COUNTS = ("rows_read", "rows_accepted", "rows_quarantined")


def _tables(ingest: Mapping) -> list[str]:
    # Both landed tables always, so every run has the same metric keys (zeros when nothing was new).
    return sorted({CATALOG.name, TRANSACTIONS.name} | {p["table"] for p in ingest["partitions"]})


def served_model(served: Mapping) -> str:
    """What a run served, as one string: ``classic:count``, or with models
    ``hybrid[cold]:models:/prodassoc-student/3,models:/prodassoc-gnn/3 + classic[warm]:count``."""
    segments = served["segments"]
    hybrid = [s for s in ("warm", "cold") if segments[s] == "hybrid"]
    classic = [s for s in ("warm", "cold") if segments[s] == "classic"]
    if not hybrid:
        return f"classic:{served['classic']}"
    models = ",".join(u for u in (served.get("student_model"), served.get("gnn_model")) if u)
    text = f"hybrid[{','.join(hybrid)}]:{models}"
    return text + (f" + classic[{','.join(classic)}]:{served['classic']}" if classic else "")


def artifact_key(as_of: date) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes: ``nightly-2011-11-01``."""
    return f"nightly-{as_of.isoformat()}"


def redact_uri(uri: str) -> str:
    """``uri`` without a password (a tracking URI may carry one); other URIs unchanged."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def nightly_params(
    as_of: date, served: Mapping, lookback_days: int, mining: MiningConfig, associations: AssociationConfig,
    embedding_model: str | None = None, engine: str = "local",
) -> dict[str, object]:
    """The settings that decide a run's output, as MLflow params (``embedding_model``: the
    registered model version behind product_embeddings, only when the run published them;
    ``engine``: which engine ran the data stages, local or spark, same tables either way)."""
    params: dict[str, object] = {
        "as_of": as_of.isoformat(),
        "engine": engine,
        "model": served_model(served),
        "classic": served["classic"],
        "serve_warm": served["segments"]["warm"],
        "serve_cold": served["segments"]["cold"],
        "student_model": served.get("student_model") or "",
        "gnn_model": served.get("gnn_model") or "",
        "model_as_of": served.get("model_as_of") or "",
        "lookback_days": lookback_days,
        "min_support": mining.min_support,
        "min_confidence": mining.min_confidence,
        "min_len": mining.min_len,
        "max_len": mining.max_len,
        "method": associations.method,
        "min_pair_count": associations.min_pair_count,
        "top_k": associations.top_k,
    }
    if embedding_model:
        params["embedding_model"] = embedding_model
    return params


def nightly_metrics(
    ingest: Mapping, published: Sequence[Mapping], n_baskets: int, timings: Mapping[str, float]
) -> dict[str, float]:
    """Flat, MLflow-safe metrics of one run.

    ``ingest``: the flow's ingestion report (``asdict(IngestReport)``); ``published``: one
    mapping per table with ``table`` and ``rows``; ``timings``: stage -> seconds.
    Keys: the report's file and row counts, ``rows_read_<table>`` / ``rows_quarantined_<table>``
    per landed table, ``baskets``, ``rules`` (published association rules),
    ``published_rows_<table>``, ``seconds_<stage>``.
    """
    metrics: dict[str, float] = {k: float(ingest[k]) for k in (*_FILE_COUNTS, *_ROW_COUNTS)}
    for table in _tables(ingest):
        parts = [p for p in ingest["partitions"] if p["table"] == table]
        metrics[f"rows_read_{table}"] = float(sum(p["rows_read"] for p in parts))
        metrics[f"rows_quarantined_{table}"] = float(sum(p["rows_quarantined"] for p in parts))
    metrics["baskets"] = float(n_baskets)
    for p in published:
        metrics[f"published_rows_{p['table']}"] = float(p["rows"])
    metrics["rules"] = metrics.get("published_rows_association_rules", 0.0)
    for stage, seconds in timings.items():
        metrics[f"seconds_{stage}"] = round(float(seconds), 3)
    return metrics


def top_quarantine_rules(ingest: Mapping, n: int = 5) -> list[tuple[str, int]]:
    """The rules that quarantined most rows in this run, summed over partitions (rule, rows)."""
    counts: Counter[str] = Counter()
    for p in ingest["partitions"]:
        for rule, rows in p.get("top_rules", ()):
            counts[rule] += rows
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def nightly_markdown(
    as_of: date,
    served: Mapping,
    metrics: Mapping[str, float],
    ingest: Mapping,
    published: Sequence[Mapping],
    tracking: str,
    embedding_model: str | None = None,
    report: Path | str | None = None,
) -> str:
    """The run's page: models used, counts, quarantine, published partitions, timings, and where
    MLflow has it. ``embedding_model``: the model version behind product_embeddings, if published;
    ``report``: the path of the run's HTML report (prodassoc_core/pipeline/run_report.py), if written."""
    m = metrics
    embeddings = f"`{embedding_model}` (the served student)" if embedding_model else "none (no student served)"
    lines = [
        f"# prodassoc nightly, as_of {as_of.isoformat()}",
        "",
        f"Served: `{served_model(served)}`; product embeddings: {embeddings}. MLflow: {tracking}.",
        "",
        f"- {served['served']}",
        f"- classic method: {served['classic_reason']}",
        f"- models: {served['reason']}",
        "",
        *([f"Report (HTML, one page: served, counts, top associations and bundles, network, changes): `{report}`", ""]
          if report else []),
        "## Ingestion",
        "",
        "| files seen | ingested | skipped | failed | duplicate | deferred |",
        "|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(f"{int(m[k]):,}" for k in _FILE_COUNTS) + " |",
        "",
        "| table | rows read | accepted | quarantined |",
        "|---|---:|---:|---:|",
    ]
    for table in _tables(ingest):
        read, quarantined = int(m[f"rows_read_{table}"]), int(m[f"rows_quarantined_{table}"])
        lines.append(f"| {table} | {read:,} | {read - quarantined:,} | {quarantined:,} |")
    lines.append(
        f"| **all** | {int(m['rows_read']):,} | {int(m['rows_accepted']):,} | {int(m['rows_quarantined']):,} |"
    )
    top = top_quarantine_rules(ingest)
    if top:
        lines += ["", "Quarantine, top rules this run: " + ", ".join(f"`{r}` {n:,}" for r, n in top) + "."]
    elif int(m["rows_quarantined"]) == 0:
        lines += ["", "Nothing quarantined this run."]
    if ingest.get("data_docs"):
        lines += ["", f"Data Docs: `{ingest['data_docs']}`"]
    lines += [
        "",
        "## Published",
        "",
        f"{int(m['baskets']):,} baskets in the training window; {int(m['rules']):,} association rules.",
        "",
        "| table | rows | partition |",
        "|---|---:|---|",
    ]
    lines += [f"| {p['table']} | {int(p['rows']):,} | `{p['path']}` |" for p in published]
    lines += ["", "## Timings (wall seconds)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k.removeprefix('seconds_')} | {v:.2f} |" for k, v in m.items() if k.startswith("seconds_")]
    return "\n".join(lines) + "\n"
