"""Record (ingest step 6): the manifest of landed files and the report of one run.

The manifest (contracts.MANIFEST, one row per landed file, sorted by (table, file)) says what
became of each file: ``ingested``, ``failed``, ``unreadable`` or ``duplicate``, with its sha256
and row counts. ``Ledger`` holds its rows as a run updates them, together with the run's
``IngestReport``; ``Ledger.write`` replaces the manifest atomically.

A manifest damaged outside prodassoc (a bad disk, a bad restore, an edit: prodassoc's own writes
are atomic) is not a dead end. ``read_manifest`` raises ``ManifestError`` naming it; the next
ingestion moves it aside (its bytes kept, beside it) and rebuilds it by validating every landed
file again, as it would for a data dir whose manifest was deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.data import contracts as c
from prodassoc_core.data.landing import Landed
from prodassoc_core.data.loading import Loaded
from prodassoc_core.data.reconcile import check_file_counts
from prodassoc_core.data.staging import set_aside, write_table

INGESTED, FAILED, DUPLICATE = "ingested", "failed", "duplicate"

logger = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest file exists but cannot be read as contracts.MANIFEST."""


@dataclass(frozen=True)
class PartitionStats:
    """Counts for one partition (a transactions day, or a catalog snapshot) in this run."""

    table: str
    partition: str
    files: int
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    status: str  # ingested | failed | unreadable
    top_rules: tuple[tuple[str, int], ...] = ()

    @property
    def quarantined_share(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0


@dataclass
class IngestReport:
    """What one ``ingest`` call did. Row counts cover files processed in this run (both tables)."""

    as_of: date
    files_seen: int = 0  # current catalog snapshot + transaction files dated before as_of
    files_ingested: int = 0
    files_skipped: int = 0  # already ingested with the same sha256
    files_failed: int = 0  # failed or unreadable
    files_duplicate: int = 0  # same bytes as a file whose rows were accepted and are staged
    rows_duplicate: int = 0  # rows of those files: landed, not counted again
    files_deferred: int = 0  # transaction files dated on/after as_of
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    partitions: list[PartitionStats] = field(default_factory=list)
    catalog_file: str | None = None
    data_docs: Path | None = None
    errors: list[str] = field(default_factory=list)
    manifest_rebuilt: str | None = None  # the manifest was unreadable: where it went, what was done
    restaged: list[str] = field(default_factory=list)  # staged outputs found missing or damaged, ingested again


def empty_manifest() -> pl.DataFrame:
    return pl.DataFrame(schema=c.MANIFEST.polars_schema)


def read_manifest(manifest_path: Path) -> pl.DataFrame:
    """The manifest (contracts.MANIFEST); empty when the file does not exist yet."""
    if not Path(manifest_path).exists():
        return empty_manifest()
    try:
        return pl.from_arrow(c.MANIFEST.conform(pq.read_table(manifest_path)))
    except (OSError, pa.ArrowException, ValueError) as exc:  # not Parquet, torn, or not the contract's columns
        raise ManifestError(f"manifest {manifest_path} is unreadable ({type(exc).__name__}: {exc})") from exc


def write_manifest(manifest_path: Path, rows: dict[tuple[str, str], dict]) -> None:
    frame = pl.DataFrame(list(rows.values()), schema=c.MANIFEST.polars_schema)
    table = c.MANIFEST.conform(frame.sort("table", "file").to_arrow())
    write_table(Path(manifest_path), table)


def manifest_row(
    loaded: Loaded, accepted: int, quarantined: int, status: str, detail: str | None, as_of: date
) -> dict:
    check_file_counts(loaded, accepted, quarantined)
    return {
        "table": loaded.file.table,
        "file": loaded.file.rel,
        "partition": loaded.file.partition,
        "sha256": loaded.sha,
        "rows_read": loaded.rows,
        "rows_accepted": accepted,
        "rows_quarantined": quarantined,
        "status": status,
        "detail": detail,
        "run_as_of": as_of,
    }


class Ledger:
    """The manifest's rows as one run updates them, and the run's report."""

    def __init__(self, manifest_path: Path, as_of: date) -> None:
        self.path, self.as_of = Path(manifest_path), as_of
        self.report = IngestReport(as_of=as_of)
        try:
            account = read_manifest(self.path)
        except ManifestError as exc:
            aside = set_aside(self.path, f"unreadable-as_of={as_of.isoformat()}")
            self.report.manifest_rebuilt = (f"{exc}; moved to {aside} and rebuilt: every landed file was validated "
                                            f"again")
            logger.warning("%s", self.report.manifest_rebuilt)
            account = empty_manifest()
        self.rows = {(r["table"], r["file"]): r for r in account.iter_rows(named=True)}

    def previous(self, file: Landed) -> dict | None:
        """The manifest's row for ``file`` before this run recorded it (or as recorded so far)."""
        return self.rows.get((file.table, file.rel))

    def already_ingested(self, file: Landed, sha: str) -> bool:
        prev = self.previous(file)
        return prev is not None and prev["sha256"] == sha and prev["status"] == INGESTED

    def accepted_by_sha(self, table: str) -> dict[str, list[dict]]:
        """Ingested rows of ``table`` with accepted rows, by sha256, each list in file order."""
        by_sha: dict[str, list[dict]] = {}
        for row in sorted(self.rows.values(), key=lambda r: r["file"]):
            if row["table"] == table and row["status"] == INGESTED and row["rows_accepted"]:
                by_sha.setdefault(row["sha256"], []).append(row)
        return by_sha

    def with_outputs(self, table: str) -> list[dict]:
        """The rows of ``table``'s ingested files that have outputs: accepted rows in staging,
        quarantined rows in the quarantine."""
        return [r for r in self.rows.values()
                if r["table"] == table and r["status"] == INGESTED and (r["rows_accepted"] or r["rows_quarantined"])]

    def forget(self, file: Landed) -> None:
        """Drop ``file``'s row: the run treats the file as new."""
        self.rows.pop((file.table, file.rel), None)

    def record(self, loaded: Loaded, accepted: int, quarantined: int, status: str, detail: str | None) -> None:
        """The verdict on a processed file: its manifest row and the report's counts."""
        self.rows[(loaded.file.table, loaded.file.rel)] = manifest_row(
            loaded, accepted, quarantined, status, detail, self.as_of
        )
        r = self.report
        if status == INGESTED:
            r.files_ingested += 1
        else:
            r.files_failed += 1
        r.rows_read += loaded.rows
        r.rows_accepted += accepted
        r.rows_quarantined += quarantined

    def record_duplicate(self, file: Landed, sha: str, rows: int, detail: str) -> None:
        """A file not ingested again: same bytes as a file whose accepted rows are staged."""
        loaded = Loaded(file, sha, DUPLICATE)
        self.rows[(file.table, file.rel)] = manifest_row(loaded, 0, 0, DUPLICATE, detail, self.as_of)
        self.report.files_duplicate += 1
        self.report.rows_duplicate += rows

    def write(self) -> None:
        write_manifest(self.path, self.rows)
