"""Validate (ingest step 3): run validation over loaded files and judge files and partitions.

``validate_batch`` validates the rows of many loaded transaction files in one run (one Great
Expectations run, see ``validation``) and splits the outcome per file. ``judge_partition``
applies ``max_failed_share`` to a day: the share judges the rows of readable, well-formed files,
so a rejected file (a missing column, an unsupported type) fails on its own without sinking the
day's other files. ``catalog_refusal`` says why a validated catalog snapshot may not be staged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import polars as pl

from prodassoc_core.data import contracts as c
from prodassoc_core.data.loading import OK, REJECTED, UNREADABLE, Loaded, with_ignored
from prodassoc_core.data.manifest import FAILED, INGESTED, PartitionStats
from prodassoc_core.data.reconcile import check_validated_rows

logger = logging.getLogger("prodassoc.ingest")


def top_rules(reasons: pl.Series, n: int = 3) -> tuple[tuple[str, int], ...]:
    """The ``n`` rules failed most often in ``reasons`` (``; ``-joined rules per row), with counts."""
    if reasons.is_empty():
        return ()
    counts = (
        reasons.str.split("; ").explode().value_counts(name="n").sort(["n", reasons.name], descending=[True, False])
    )
    return tuple((str(r), int(k)) for r, k in counts.head(n).iter_rows())


def format_rules(rules: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{r}={n}" for r, n in rules) or "none"


class FileResult(NamedTuple):
    """One loaded file's share of a validation run."""

    loaded: Loaded
    accepted: pl.DataFrame | None  # accepted rows (status ok), None if none
    reasons: pl.DataFrame  # _source_row, _reason of its quarantined rows


def validate_batch(batch: list[Loaded], validate: Callable[[pl.DataFrame], object]) -> dict[str, FileResult]:
    """Validate the rows of every ``ok`` file of ``batch`` in one call; results by landed file.

    ``validate`` is called once with all the rows (and not at all when no file is ``ok``) and
    returns a validation outcome (``accepted`` and ``quarantined`` frames with ``_source_file``).
    """
    frames = [b.frame for b in batch if b.status == OK]
    n_rows = sum(f.height for f in frames)
    logger.info("validate: %d rows from %d files", n_rows, len(batch))
    if frames:
        outcome = validate(pl.concat(frames, how="vertical"))
        check_validated_rows(outcome, n_rows)
        accepted = outcome.accepted.partition_by(c.SOURCE_FILE, as_dict=True, maintain_order=True)
        quarantined = outcome.quarantined.partition_by(c.SOURCE_FILE, as_dict=True, maintain_order=True)
    else:
        accepted, quarantined = {}, {}
    empty_q = pl.DataFrame(schema={c.SOURCE_ROW: pl.Int64, c.REASON: pl.String})
    results: dict[str, FileResult] = {}
    for b in batch:
        if b.status == OK:
            q = quarantined.get((b.file.rel,), empty_q)
            results[b.file.rel] = FileResult(b, accepted.get((b.file.rel,)), q.select(c.SOURCE_ROW, c.REASON))
        elif b.status == REJECTED:
            results[b.file.rel] = FileResult(b, None, b.quarantine.select(c.SOURCE_ROW, c.REASON))
        else:
            results[b.file.rel] = FileResult(b, None, empty_q)
    return results


def by_partition(batch: list[Loaded]) -> dict[str, list[str]]:
    """Landed files of ``batch`` by partition, both in batch order."""
    out: dict[str, list[str]] = {}
    for b in batch:
        out.setdefault(b.file.partition, []).append(b.file.rel)
    return out


@dataclass(frozen=True)
class PartitionVerdict:
    """A transactions day's files in one validation run, judged against ``max_failed_share``."""

    partition: str
    results: list[FileResult]
    max_failed_share: float
    read: int  # rows of its readable files
    n_q: int  # rows quarantined, rejected files included
    rules: tuple[tuple[str, int], ...]
    ok_read: int  # rows of its well-formed files: what the share judges
    ok_q: int
    share: float

    @property
    def over(self) -> bool:
        return self.share > self.max_failed_share

    def error(self, quarantine_dir: Path) -> str:
        """The run's problem when the day is over the share."""
        rels = [r.loaded.file.rel for r in self.results]
        return (
            f"transactions partition dt={self.partition}: {self.ok_q} of {self.ok_read} rows quarantined "
            f"({self.share:.1%}) > max_failed_share {self.max_failed_share:.1%}; files: {', '.join(rels)}; "
            f"top rules: {format_rules(self.rules)}; accepted rows not staged; quarantine: {quarantine_dir}"
        )

    def file_status(self, result: FileResult) -> tuple[str, str | None]:
        """(manifest status, detail) of a readable file of this day."""
        b, q = result.loaded, result.reasons
        file_rules = format_rules(top_rules(q[c.REASON]))
        if b.status == REJECTED:
            return FAILED, b.detail
        if self.over:
            return FAILED, (
                f"partition quarantined share {self.share:.1%} > max_failed_share "
                f"{self.max_failed_share:.1%}; accepted rows not staged; rules: {file_rules}"
            )
        return INGESTED, with_ignored(f"{q.height} rows quarantined: {file_rules}" if q.height else None, b)

    def stats(self) -> PartitionStats:
        loads = [r.loaded for r in self.results]
        if all(b.status == UNREADABLE for b in loads):
            status = UNREADABLE
        elif self.over or any(b.status != OK for b in loads):
            status = FAILED  # good files of a partition with a broken one are still staged
        else:
            status = INGESTED
        return PartitionStats(
            c.TRANSACTIONS.name, self.partition, len(loads), self.read, self.read - self.n_q, self.n_q, status,
            self.rules,
        )


def judge_partition(partition: str, results: list[FileResult], max_failed_share: float) -> PartitionVerdict:
    loads = [r.loaded for r in results]
    reasons = pl.concat([r.reasons[c.REASON] for r in results])
    ok_read = sum(b.rows for b in loads if b.status == OK)
    ok_q = sum(r.reasons.height for r in results if r.loaded.status == OK)
    return PartitionVerdict(
        partition=partition,
        results=results,
        max_failed_share=max_failed_share,
        read=sum(b.rows for b in loads if b.status != UNREADABLE),
        n_q=reasons.len(),
        rules=top_rules(reasons),
        ok_read=ok_read,
        ok_q=ok_q,
        share=ok_q / ok_read if ok_read else 0.0,
    )


def catalog_refusal(
    loaded: Loaded, n_acc: int, n_q: int, rules: tuple[tuple[str, int], ...], max_failed_share: float,
    quarantine_path: Path,
) -> tuple[str, str] | None:
    """(manifest detail, problem) when a validated catalog snapshot may not be staged; None if it may."""
    rel = loaded.file.rel
    share = n_q / loaded.rows if loaded.rows else 0.0
    if share > max_failed_share:
        return (
            f"quarantined share {share:.1%} > max_failed_share {max_failed_share:.1%}; not staged",
            f"catalog snapshot {rel}: {n_q} of {loaded.rows} rows quarantined ({share:.1%}) > "
            f"max_failed_share {max_failed_share:.1%}; top rules: {format_rules(rules)}; "
            f"staged catalog left unchanged; quarantine: {quarantine_path}",
        )
    if n_acc == 0:
        return (
            "no row passed validation; not staged",
            f"catalog snapshot {rel}: none of its {loaded.rows} rows passed validation "
            f"(top rules: {format_rules(rules)}); staged catalog left unchanged; quarantine: {quarantine_path}",
        )
    return None


def catalog_shrink_refusal(rel: str, new_ids: pl.Series, staged_ids: pl.Series, max_shrink: float) -> tuple[str, str] | None:
    """(manifest detail, problem) when a snapshot lacks more than ``max_shrink`` of the staged
    catalog's products (a partial export, or a delta taken for a snapshot); None if it may replace it."""
    if staged_ids.is_empty():
        return None
    gone = staged_ids.n_unique() - staged_ids.unique().is_in(new_ids.implode()).sum()
    share = gone / staged_ids.n_unique()
    if share <= max_shrink:
        return None
    counts = (f"lists {new_ids.n_unique():,} products: {gone:,} of the staged catalog's {staged_ids.n_unique():,} "
              f"({share:.1%}) are not in it, more than validation.max_catalog_shrink {max_shrink:.1%}")
    return (
        f"{counts}; not staged",
        f"catalog snapshot {rel} {counts}. A snapshot lists every product; if the range really shrank, "
        f"set PRODASSOC_VALIDATION__MAX_CATALOG_SHRINK=1 for one run; staged catalog left unchanged",
    )
