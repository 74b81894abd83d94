"""What a data directory holds, for ``prodassoc status``: the landed days, the manifest's account
of every landed file, the published run dates (gaps, damaged ones), what the newest run served,
and what is kept. Reads files only: no Prefect, no MLflow, no clock."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta

from prodassoc_core.data import landing, manifest, warehouse
from prodassoc_core.ops import Settings
from prodassoc_core.pipeline import stages


@dataclass(frozen=True)
class DataStatus:
    landed_days: list[date]  # transaction partitions in the landing zone
    files: dict[str, int]  # manifest status -> landed files
    rows: dict[str, int]  # read, accepted, quarantined (the manifest's sums)
    committed: dict[date, dict[str, dict]]  # run date -> {table: {rows, bytes}}
    damaged: dict[date, list[str]]  # committed once, files since missing or changed
    served: dict | None  # the newest committed run's serving plan (ServingPlan.as_json)
    manifest_error: str | None = None  # the manifest is unreadable (the next run sets it aside and rebuilds it)
    served_error: str | None = None  # the newest run's serving plan is unreadable

    @property
    def gaps(self) -> list[date]:
        """Days between the first and the newest committed run date that have no committed run."""
        if not self.committed:
            return []
        first, last = min(self.committed), max(self.committed)
        return [d for d in (first + timedelta(days=i) for i in range((last - first).days + 1)) if d not in self.committed]

    def as_json(self, settings: Settings) -> dict:
        """The status as plain values (``prodassoc status --json``), for monitoring scripts."""
        newest = max(self.committed) if self.committed else None
        return {
            "data_dir": str(settings.data_dir),
            "landed_days": [d.isoformat() for d in self.landed_days],
            "manifest": {"files": self.files, "rows": self.rows} if self.manifest_error is None
            else {"error": self.manifest_error},
            "published": [d.isoformat() for d in sorted(self.committed)],
            "days_without_a_run": [d.isoformat() for d in self.gaps],
            "newest": None if newest is None else {
                "run_date": newest.isoformat(), "tables": {t: v["rows"] for t, v in sorted(self.committed[newest].items())},
                "served": None if self.served is None else {k: self.served.get(k) for k in ("segments", "served")},
                **({"served_error": self.served_error} if self.served_error else {}),
            },
            "damaged": {d.isoformat(): tables for d, tables in self.damaged.items()},
            "kept": {"keep_published_days": settings.keep_published_days, "keep_run_baskets": settings.keep_run_baskets,
                     "keep_trainings": settings.keep_trainings},
        }


def data_status(settings: Settings) -> DataStatus:
    """The status of ``settings.data_dir`` (which must exist)."""
    try:
        account, error = manifest.read_manifest(settings.manifest_path), None
    except manifest.ManifestError as exc:
        account, error = manifest.empty_manifest(), str(exc)
    files = dict(account.group_by("status").len().sort("status").iter_rows())
    rows = {k: int(account[f"rows_{k}"].sum()) for k in ("read", "accepted", "quarantined")}
    committed = warehouse.committed_dates(settings.warehouse_dir)
    served = served_error = None
    if committed:
        plan = stages.run_folder(settings, max(committed)) / stages.SERVING_FILE
        try:
            served = json.loads(plan.read_text()) if plan.is_file() else None
        except (OSError, ValueError) as exc:  # damaged outside prodassoc (written atomically)
            served_error = f"{plan} is unreadable ({stages.error_line(exc)}); a rerun of that date rewrites it"
    return DataStatus(
        landed_days=[d for d, _ in landing.partition_dirs(settings.landing_dir / "transactions")],
        files=files, rows=rows, committed=committed,
        damaged=warehouse.damaged_dates(settings.warehouse_dir), served=served, manifest_error=error,
        served_error=served_error,
    )


def _span(days: list[date], what: str) -> str:
    """``3 landed days, 2024-01-01 .. 2024-01-06`` (the count, then the first and last)."""
    count = f"{len(days)} {what} day{'s' if len(days) != 1 else ''}"
    return f"{count}, {days[0]}" + (f" .. {days[-1]}" if len(days) > 1 else "")


def _dates(days: list[date], most: int = 5) -> str:
    shown = ", ".join(map(str, days[:most]))
    return shown + (f" and {len(days) - most} more" if len(days) > most else "")


def describe(status: DataStatus, settings: Settings) -> list[str]:
    """The status as the lines ``prodassoc status`` prints."""
    out = [f"data dir: {settings.data_dir}"]
    out.append(f"landed: transactions of {_span(status.landed_days, 'landed')}" if status.landed_days
               else f"landed: no transactions in {settings.landing_dir} (prodassoc import …)")
    if status.manifest_error is not None:
        out.append(f"manifest: unreadable: {status.manifest_error}; the next run moves it aside and rebuilds it by "
                   f"validating every landed file again")
    elif status.files:
        counts = ", ".join(f"{n} {s}" for s, n in status.files.items())
        r = status.rows
        out.append(f"manifest: {sum(status.files.values())} files ({counts}); rows {r['read']:,} read = "
                   f"{r['accepted']:,} accepted + {r['quarantined']:,} quarantined")
    else:
        out.append("manifest: nothing ingested yet")
    if status.committed:
        days = sorted(status.committed)
        gaps = f"; {len(status.gaps)} day(s) without a run: {_dates(status.gaps)}" if status.gaps else ""
        out.append(f"published: {_span(days, 'run')}{gaps}")
        newest = status.committed[days[-1]]
        out.append(f"newest run {days[-1]}: " + ", ".join(f"{t} {v['rows']:,} rows" for t, v in sorted(newest.items())))
        if status.served is not None:
            out.append(f"served on {days[-1]}: {status.served['served']}")
        elif status.served_error is not None:
            out.append(f"served on {days[-1]}: unknown: {status.served_error}")
    else:
        out.append("published: nothing yet (prodassoc run --as-of YYYY-MM-DD)")
    for day, tables in status.damaged.items():
        out.append(f"damaged: run {day}: {', '.join(tables)} missing or changed since it committed (not in the "
                   f"views; rerun it: prodassoc run --as-of {day})")
    keep = settings.keep_published_days
    out.append(f"kept: {'every published date' if keep is None else f'the newest {keep} days of published dates'} "
               f"(keep_published_days); run baskets of the newest {settings.keep_run_baskets} dates; "
               f"training folders of the newest {settings.keep_trainings} trainings")
    return out

