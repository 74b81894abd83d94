"""Incremental ingestion: landing zone -> validated staging + quarantine, tracked by a manifest.

Layout (``<file>`` is the landed file's stem, ``<sha8>`` the first 8 hex digits of its sha256)::

    <landing>/catalog/*.parquet                          snapshots; name sorting last = current
    <landing>/transactions/dt=YYYY-MM-DD/*.parquet

    <staging>/catalog/catalog.parquet                    accepted rows of the current snapshot,
                                                         contracts.CATALOG, sorted by product_id
    <staging>/transactions/dt=YYYY-MM-DD/<file>-<sha8>.parquet
                                                         accepted rows, contracts.TRANSACTIONS
                                                         (no lineage columns), source row order
    <quarantine>/catalog/<file>-<sha8>.parquet           failing rows: the landed columns
    <quarantine>/transactions/dt=YYYY-MM-DD/<file>-<sha8>.parquet
                                                         (contract columns of the wrong type as
                                                         strings), _source_file, _source_row,
                                                         _partition, _reason
    <manifest_path>                                      contracts.MANIFEST, one row per landed
                                                         file, sorted by (table, file)

Staged files carry their source file and sha256 in the Parquet key-value metadata.

Rules of the run:

* Catalog first. If the current snapshot's sha256 is what the staged catalog was built from,
  the staged catalog is reused; otherwise it is validated and replaced.
* Transactions: only partitions dated before ``as_of`` (that day is not complete yet).
  A file whose (path, sha256) the manifest records as ``ingested`` is skipped; files that
  are new, changed, or recorded ``failed``/``unreadable`` are (re)processed, so a failed
  partition keeps failing the run until its files (or the catalog, or the threshold) are
  fixed, rather than being forgotten. A changed file replaces its earlier outputs.
* All new files of many partitions are validated in one GE run (batches of ~``batch_rows``).
* A partition whose quarantined share (over the files processed in this run) exceeds
  ``cfg.max_failed_share`` fails: its accepted rows are not staged and its files are
  marked ``failed``. A file missing a required column, or with a column of a type the
  contract does not convert (contracts.py: a boolean id, a struct, a list), is quarantined
  whole (``missing_column:<c>``, ``unsupported_type:<c>(<type>)``) and marked ``failed``;
  it does not count in its partition's share, so the day's other files are staged as usual.
  An unreadable Parquet file is marked
  ``unreadable`` with 0 rows. Quarantine, staging and the manifest are written before
  the run raises one ``IngestError`` listing every problem.
* A transactions file with the same bytes (sha256) as another file whose rows were *accepted*
  and are still staged (a re-drop under a new name) is not ingested again: the manifest records
  it as ``duplicate`` with 0 rows, naming the original and its row count, so no row is counted
  twice. The original must be in the same partition, or have had no row quarantined (then a
  copy elsewhere could only fail ``in_partition``), and, if still landed, unchanged. A copy of
  content that was quarantined claims nothing: a misfiled copy in the wrong day is validated
  (its rows fail ``in_partition``) and never hides the real file. Of two new files with the
  same bytes in one run, the second waits for the first's verdict. Every landed file's rows
  are thus accepted, quarantined, or skipped as a named duplicate of accepted rows.
* Data outside a partition (a directory under ``<landing>/transactions`` not named exactly
  ``dt=YYYY-MM-DD``, a Parquet file directly under it) is not ingested and fails the run
  with a message naming it; hidden and ``_``-prefixed names are ignored.
* A catalog snapshot with no rows, or none that passes validation, fails the run naming
  the file; the staged catalog is left as it was.
* Every write is atomic (temporary file + ``os.replace`` in the same directory), and for
  every file ``rows_read == rows_accepted + rows_quarantined``. Temporary files of killed
  writers (``.<name>.<pid>.tmp``, pid no longer running) are removed at the next run.

Transactions already staged are not re-validated when a new catalog snapshot arrives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.data import contracts as c
from prodassoc_core.data.contracts import TableContract
from prodassoc_core.data.validation import (
    GxSuites,
    conform,
    data_docs_index,
    gx_suites,
    missing_columns,
    stringify_mismatched,
    unsupported_types,
    validate_catalog,
    validate_transactions,
)
from prodassoc_core.data.warehouse import _STORAGE_ERRNOS, StorageError, remove_stale_temp, storage_error
from prodassoc_core.ops import ValidationConfig

logger = logging.getLogger("prodassoc.ingest")

INGESTED, FAILED, UNREADABLE, DUPLICATE = "ingested", "failed", "unreadable", "duplicate"
REJECTED = "rejected"  # a _Loaded whose whole file is quarantined (a missing column, an unsupported type)
CATALOG_FILE = "catalog.parquet"
DEFAULT_BATCH_ROWS = 1_000_000
_META_SOURCE = b"prodassoc.source_file"
_META_SHA = b"prodassoc.sha256"
_PARTITION_NAME = re.compile(r"dt=\d{4}-\d{2}-\d{2}")


class IngestError(RuntimeError):
    """The run finished its writes but some partitions or files failed; ``report`` says what."""

    def __init__(self, message: str, report: "IngestReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


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


# --- small I/O helpers ------------------------------------------------------------------


@dataclass(frozen=True)
class _Landed:
    table: str
    path: Path
    rel: str  # path relative to landing, POSIX separators: the manifest's `file`
    partition: str  # YYYY-MM-DD for transactions, the file stem for catalog snapshots


@dataclass
class _Loaded:
    file: _Landed
    sha: str
    status: str  # ok | rejected | unreadable
    rows: int = 0
    frame: pl.DataFrame | None = None  # conformed rows + lineage + _reason (status ok)
    quarantine: pl.DataFrame | None = None  # whole file (status rejected)
    detail: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _visible_parquet(directory: Path) -> list[Path]:
    """Parquet files in ``directory``, sorted; hidden/temporary ones (``.x``, ``_x``) skipped."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_"))
    )


def _partition_date(name: str) -> date | None:
    """The date of a ``dt=YYYY-MM-DD`` directory name, exactly that form; None otherwise."""
    if not _PARTITION_NAME.fullmatch(name):
        return None
    try:
        return date.fromisoformat(name[3:])
    except ValueError:
        return None


def _partition_dirs(root: Path) -> list[tuple[date, Path]]:
    """``dt=YYYY-MM-DD`` directories under ``root``, by date; other names are skipped (see ``_misplaced``)."""
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.glob("dt=*")):
        day = _partition_date(d.name)
        if d.is_dir() and day is not None:
            out.append((day, d))
    return out


def _misplaced(root: Path) -> list[Path]:
    """Entries of a landing table directory that look like data but are outside a partition.

    Directories not named ``dt=YYYY-MM-DD`` and Parquet files directly under ``root``;
    hidden and temporary names (``.x``, ``_x``) and other files are not data.
    """
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith((".", "_")):
            continue
        if p.is_dir() and _partition_date(p.name) is None:
            out.append(p)
        elif p.is_file() and p.suffix == ".parquet":
            out.append(p)
    return out


def _tmp_pid(name: str) -> int | None:
    """Writer pid of a ``_write_atomic`` temporary file (``.<name>.<pid>.tmp``)."""
    parts = name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def remove_stale_temp_files(*roots: Path) -> int:
    """Remove temporary files left under ``roots`` by killed writers; returns how many."""
    n = 0
    for root in roots:
        if Path(root).is_dir():
            for directory in {p.parent for p in Path(root).rglob(".*.tmp")}:
                n += len(remove_stale_temp(directory, ".*.tmp", _tmp_pid))
    return n


def _write_atomic(path: Path, write) -> None:
    """Call ``write(tmp)`` for a temporary file next to ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk or a read-only zone: one line naming the file
        if isinstance(exc, StorageError) or exc.errno not in _STORAGE_ERRNOS:
            raise
        raise storage_error(exc, path, None) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_table(path: Path, table: pa.Table) -> None:
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _write_frame(path: Path, frame: pl.DataFrame) -> None:
    _write_atomic(path, lambda tmp: frame.write_parquet(tmp))


def _contract_table(frame: pl.DataFrame, contract: TableContract, source: _Landed, sha: str) -> pa.Table:
    table = contract.conform(frame.select(contract.polars_schema.names()).to_arrow())
    return table.replace_schema_metadata({_META_SOURCE: source.rel.encode(), _META_SHA: sha.encode()})


def _output_name(file: _Landed, sha: str) -> str:
    return f"{file.path.stem}-{sha[:8]}.parquet"


def _output_dir(root: Path, file: _Landed) -> Path:
    if file.table == c.TRANSACTIONS.name:
        return root / c.TRANSACTIONS.name / f"dt={file.partition}"
    return root / file.table


# --- manifest ---------------------------------------------------------------------------


def read_manifest(manifest_path: Path) -> pl.DataFrame:
    """The manifest (contracts.MANIFEST); empty when the file does not exist yet."""
    schema = c.MANIFEST.polars_schema
    if not Path(manifest_path).exists():
        return pl.DataFrame(schema=schema)
    return pl.from_arrow(c.MANIFEST.conform(pq.read_table(manifest_path)))


def _write_manifest(manifest_path: Path, rows: dict[tuple[str, str], dict]) -> None:
    frame = pl.DataFrame(list(rows.values()), schema=c.MANIFEST.polars_schema)
    table = c.MANIFEST.conform(frame.sort("table", "file").to_arrow())
    _write_table(Path(manifest_path), table)


def _manifest_row(
    loaded: _Loaded, accepted: int, quarantined: int, status: str, detail: str | None, as_of: date
) -> dict:
    if loaded.status != UNREADABLE and loaded.rows != accepted + quarantined:
        raise AssertionError(
            f"{loaded.file.rel}: rows_read {loaded.rows} != accepted {accepted} + quarantined {quarantined}"
        )
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


# --- loading a landed file ------------------------------------------------------------------


def _lineage(file: _Landed) -> list[pl.Expr]:
    return [
        pl.col(c.SOURCE_ROW).cast(pl.Int64),
        pl.lit(file.rel, pl.String).alias(c.SOURCE_FILE),
        pl.lit(file.partition, pl.String).alias(c.PARTITION),
    ]


def _scan(path: Path) -> pl.LazyFrame:
    return pl.scan_parquet(path, hive_partitioning=False, glob=False)


def _load(file: _Landed, contract: TableContract, sha: str) -> _Loaded:
    """Read one landed file (sha256 ``sha``): contract columns only (projection), cast, with lineage."""
    try:
        lf = _scan(file.path)
        schema = lf.collect_schema()
        missing = missing_columns(schema.names(), contract)
        unsupported = unsupported_types(schema, contract)
        rules = [f"missing_column:{m}" for m in missing] + [rule for rule, _ in unsupported]
        if rules:
            whole = (
                stringify_mismatched(lf, contract)
                .with_row_index(c.SOURCE_ROW)
                .with_columns(_lineage(file))
                .with_columns(pl.lit("; ".join(rules)).alias(c.REASON))
                .collect()
            )
        else:
            present = [n for n in contract.polars_schema.names() if n in schema]
            frame = lf.select(present).with_row_index(c.SOURCE_ROW).with_columns(_lineage(file)).collect()
    except (Exception, pl.exceptions.PanicException) as exc:  # noqa: BLE001 - any reader failure
        detail = f"unreadable Parquet: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return _Loaded(file, sha, UNREADABLE, detail=detail)
    if rules:
        problems = ([f"missing required column(s) {', '.join(missing)}"] if missing else []) + [
            f"{why} (the contract's conversion rules: contracts.py)" for _, why in unsupported
        ]
        detail = f"{'; '.join(problems)}; all {whole.height} rows quarantined"
        return _Loaded(file, sha, REJECTED, rows=whole.height, quarantine=whole, detail=detail)
    return _Loaded(file, sha, "ok", rows=frame.height, frame=conform(frame, contract))


def _quarantine_rows(file: _Landed, contract: TableContract, reasons: pl.DataFrame) -> pl.DataFrame:
    """Landed values of the failing rows (re-read lazily), with lineage and ``_reason``."""
    rows = reasons[c.SOURCE_ROW]
    source = (
        stringify_mismatched(_scan(file.path), contract)
        .with_row_index(c.SOURCE_ROW)
        .filter(pl.col(c.SOURCE_ROW).is_in(rows.cast(pl.UInt32).implode()))
        .with_columns(_lineage(file))
        .collect()
    )
    out = source.join(reasons.select(c.SOURCE_ROW, c.REASON), on=c.SOURCE_ROW, how="inner")
    lineage = [c.SOURCE_FILE, c.SOURCE_ROW, c.PARTITION, c.REASON]
    return out.select([n for n in out.columns if n not in lineage] + lineage).sort(c.SOURCE_ROW)


def _top_rules(reasons: pl.Series, n: int = 3) -> tuple[tuple[str, int], ...]:
    if reasons.is_empty():
        return ()
    counts = (
        reasons.str.split("; ").explode().value_counts(name="n").sort(["n", reasons.name], descending=[True, False])
    )
    return tuple((str(r), int(k)) for r, k in counts.head(n).iter_rows())


def _format_rules(rules: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{r}={n}" for r, n in rules) or "none"


# --- the run ----------------------------------------------------------------------------------


class _Run:
    """State of one ingest call: manifest rows, report, problems; writes outputs per file."""

    def __init__(self, landing, staging, quarantine, manifest_path, gx_dir, cfg, as_of, batch_rows):
        self.landing, self.staging, self.quarantine = Path(landing), Path(staging), Path(quarantine)
        self.manifest_path = Path(manifest_path)
        self.cfg, self.as_of, self.batch_rows = cfg, as_of, batch_rows
        self.run_name = f"ingest-{as_of.isoformat()}"
        self.report = IngestReport(as_of=as_of)
        self.rows = {(r["table"], r["file"]): r for r in read_manifest(self.manifest_path).iter_rows(named=True)}
        self.gx_dir = Path(gx_dir)
        self._gx: GxSuites | None = None

    @property
    def gx(self) -> GxSuites:
        if self._gx is None:  # GE import + context set-up only when something is validated
            self._gx = gx_suites(self.gx_dir)
        return self._gx

    def landed(self, path: Path, table: str, partition: str) -> _Landed:
        return _Landed(table, path, path.relative_to(self.landing).as_posix(), partition)

    def already_ingested(self, file: _Landed, sha: str) -> bool:
        prev = self.rows.get((file.table, file.rel))
        return prev is not None and prev["sha256"] == sha and prev["status"] == INGESTED

    def remove_stale(self, file: _Landed, sha: str) -> None:
        """Drop outputs of an earlier version of this file (and staged rows of a failed one)."""
        prev = self.rows.get((file.table, file.rel))
        if prev is not None and prev["sha256"] != sha:
            for root in (self.staging, self.quarantine):
                (_output_dir(root, file) / _output_name(file, prev["sha256"])).unlink(missing_ok=True)

    def record(self, loaded: _Loaded, accepted: int, quarantined: int, status: str, detail: str | None) -> None:
        self.rows[(loaded.file.table, loaded.file.rel)] = _manifest_row(
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

    def write_manifest(self) -> None:
        _write_manifest(self.manifest_path, self.rows)

    # --- catalog ---

    def catalog(self) -> pl.Series:
        """Ingest the current catalog snapshot if new; return the accepted product ids."""
        snapshots = _visible_parquet(self.landing / c.CATALOG.name)
        staged = self.staging / c.CATALOG.name / CATALOG_FILE
        if not snapshots:
            if staged.exists():
                logger.info("catalog: no snapshot in landing; using staged %s", staged)
                return read_staged_catalog(self.staging)[c.PRODUCT_ID]
            raise IngestError(f"no catalog snapshot in {self.landing / c.CATALOG.name} and none staged")
        file = self.landed(snapshots[-1], c.CATALOG.name, snapshots[-1].stem)
        self.report.files_seen += 1
        self.report.catalog_file = file.rel
        sha = _sha256(file.path)
        if self.already_ingested(file, sha) and _staged_sha(staged) == sha:
            self.report.files_skipped += 1
            logger.info("catalog: %s unchanged (sha %s); reusing staged catalog", file.rel, sha[:8])
            return read_staged_catalog(self.staging)[c.PRODUCT_ID]

        self.remove_stale(file, sha)
        loaded = _load(file, c.CATALOG, sha)
        quarantine_path = _output_dir(self.quarantine, file) / _output_name(file, loaded.sha)
        if loaded.status == UNREADABLE:
            self.record(loaded, 0, 0, UNREADABLE, loaded.detail)
            self.report.partitions.append(
                PartitionStats(c.CATALOG.name, file.partition, 1, 0, 0, 0, UNREADABLE)
            )
            self.fail_now(f"catalog snapshot {file.rel}: {loaded.detail}")
        if loaded.status == REJECTED:
            _write_frame(quarantine_path, loaded.quarantine)
            rules = _top_rules(loaded.quarantine[c.REASON])
            self.record(loaded, 0, loaded.rows, FAILED, loaded.detail)
            self.report.partitions.append(
                PartitionStats(c.CATALOG.name, file.partition, 1, loaded.rows, 0, loaded.rows, FAILED, rules)
            )
            self.fail_now(f"catalog snapshot {file.rel}: {loaded.detail} ({_format_rules(rules)}); "
                          f"quarantine: {quarantine_path}")

        if loaded.rows == 0:
            self.record(loaded, 0, 0, FAILED, "no rows")
            self.report.partitions.append(PartitionStats(c.CATALOG.name, file.partition, 1, 0, 0, 0, FAILED))
            self.fail_now(
                f"catalog snapshot {file.rel} has no rows; a snapshot must list every product. "
                f"Staged catalog left unchanged"
            )
        outcome = validate_catalog(loaded.frame, cfg=self.cfg, gx=self.gx, run_name=self.run_name)
        n_acc, n_q = outcome.accepted.height, outcome.quarantined.height
        rules = _top_rules(outcome.quarantined[c.REASON])
        if n_q:
            _write_frame(quarantine_path, _quarantine_rows(file, c.CATALOG, outcome.quarantined))
        else:
            quarantine_path.unlink(missing_ok=True)
        share = n_q / loaded.rows if loaded.rows else 0.0
        if share > self.cfg.max_failed_share:
            detail = f"quarantined share {share:.1%} > max_failed_share {self.cfg.max_failed_share:.1%}; not staged"
            self.record(loaded, n_acc, n_q, FAILED, detail)
            self.report.partitions.append(
                PartitionStats(c.CATALOG.name, file.partition, 1, loaded.rows, n_acc, n_q, FAILED, rules)
            )
            self.fail_now(
                f"catalog snapshot {file.rel}: {n_q} of {loaded.rows} rows quarantined ({share:.1%}) > "
                f"max_failed_share {self.cfg.max_failed_share:.1%}; top rules: {_format_rules(rules)}; "
                f"staged catalog left unchanged; quarantine: {quarantine_path}"
            )
        if n_acc == 0:
            detail = "no row passed validation; not staged"
            self.record(loaded, n_acc, n_q, FAILED, detail)
            self.report.partitions.append(
                PartitionStats(c.CATALOG.name, file.partition, 1, loaded.rows, n_acc, n_q, FAILED, rules)
            )
            self.fail_now(
                f"catalog snapshot {file.rel}: none of its {loaded.rows} rows passed validation "
                f"(top rules: {_format_rules(rules)}); staged catalog left unchanged; quarantine: {quarantine_path}"
            )
        accepted = outcome.accepted.sort(c.PRODUCT_ID)
        _write_table(staged, _contract_table(accepted, c.CATALOG, file, loaded.sha))
        detail = f"{n_q} rows quarantined: {_format_rules(rules)}" if n_q else None
        self.record(loaded, n_acc, n_q, INGESTED, detail)
        self.report.partitions.append(
            PartitionStats(c.CATALOG.name, file.partition, 1, loaded.rows, n_acc, n_q, INGESTED, rules)
        )
        self.write_manifest()
        logger.info("catalog: %s -> %d accepted, %d quarantined; staged %s", file.rel, n_acc, n_q, staged)
        return accepted[c.PRODUCT_ID]

    def fail_now(self, message: str) -> None:
        self.write_manifest()
        self.report.errors.append(message)
        self.report.data_docs = self.data_docs()
        raise IngestError(f"ingest as_of {self.as_of}: {message}", self.report)

    # --- transactions ---

    def transactions(self, catalog_ids: pl.Series) -> None:
        pending: dict[str, list[_Landed]] = {}
        n_files = 0
        root = self.landing / c.TRANSACTIONS.name
        for path in _misplaced(root):
            self.report.errors.append(
                f"{path.relative_to(self.landing).as_posix()}: not in a dt=YYYY-MM-DD partition directory of "
                f"{root}; its files are not ingested (move them to dt=<order date>/)"
            )
        for day, directory in _partition_dirs(root):
            files = _visible_parquet(directory)
            if day >= self.as_of:
                self.report.files_deferred += len(files)
                continue
            n_files += len(files)
            pending[day.isoformat()] = [self.landed(p, c.TRANSACTIONS.name, day.isoformat()) for p in files]
        self.report.files_seen += n_files
        before = (self.report.files_ingested, self.report.files_skipped, self.report.files_failed)
        logger.info(
            "transactions: %d files in %d partitions before %s (%d files on/after it deferred)",
            n_files, len(pending), self.as_of, self.report.files_deferred,
        )

        shas = {file.rel: _sha256(file.path) for files in pending.values() for file in files}
        todo = [file for files in pending.values() for file in files]
        while todo:  # a file held back (same bytes as another new file) waits for that file's verdict
            todo = self.process(todo, shas, catalog_ids)
        if self.report.files_duplicate:  # recorded without a flush: persist them
            self.write_manifest()
        r = self.report
        logger.info(
            "transactions: %d files ingested, %d skipped (unchanged), %d failed",
            r.files_ingested - before[0], r.files_skipped - before[1], r.files_failed - before[2],
        )

    def process(self, files: list[_Landed], shas: dict[str, str], catalog_ids: pl.Series) -> list[_Landed]:
        """Validate and stage ``files`` (in partition order); returns the files held back.

        A file is skipped as ``duplicate`` only when its bytes are those of a file whose rows
        were *accepted* and are still staged (``covering``). A second new file with the same
        bytes as one processed in this call is held back until that one's verdict is known:
        a copy of content that was quarantined (a misfiled copy) must not hide the real file.
        """
        batch: list[_Loaded] = []
        batch_rows = 0
        claimed: set[str] = set()
        held: list[_Landed] = []
        by_sha: dict[str, list[dict]] = defaultdict(list)
        for row in sorted(self.rows.values(), key=lambda r: r["file"]):
            if row["table"] == c.TRANSACTIONS.name and row["status"] == INGESTED and row["rows_accepted"]:
                by_sha[row["sha256"]].append(row)
        for i, file in enumerate(files):
            sha = shas[file.rel]
            if self.already_ingested(file, sha):
                self.report.files_skipped += 1
            elif (original := self.covering(file, sha, shas, by_sha.get(sha, []))) is not None:
                self.duplicate(file, sha, original)
            elif sha in claimed:
                held.append(file)
            else:
                claimed.add(sha)
                loaded = _load(file, c.TRANSACTIONS, sha)
                batch.append(loaded)
                batch_rows += loaded.rows
            last_of_partition = i + 1 == len(files) or files[i + 1].partition != file.partition
            if last_of_partition and batch_rows >= self.batch_rows:  # whole partitions: the share needs them all
                self.flush(batch, catalog_ids)
                batch, batch_rows = [], 0
        if batch:
            self.flush(batch, catalog_ids)
        return held

    def covering(self, file: _Landed, sha: str, shas: dict[str, str], candidates: list[dict]) -> str | None:
        """The file whose accepted, staged rows already hold everything ``file`` could add; None if none.

        Another file with the same sha256 covers ``file`` when it was ingested with accepted
        rows that are still staged, its landed bytes (if it is still landed) are unchanged, and
        either it lies in the same partition (same verdict row by row) or none of its rows were
        quarantined (its rows are all dated its own partition, so in another one they would
        all fail ``in_partition``). Content quarantined elsewhere claims nothing.
        """
        for row in candidates:  # ingested manifest rows with accepted rows and this sha256
            if row["file"] == file.rel or (row["partition"] != file.partition and row["rows_quarantined"] != 0):
                continue
            original = _Landed(row["table"], self.landing / row["file"], row["file"], row["partition"])
            if not (_output_dir(self.staging, original) / _output_name(original, sha)).is_file():
                continue
            if original.path.is_file():
                if row["file"] not in shas:
                    shas[row["file"]] = _sha256(original.path)
                if shas[row["file"]] != sha:
                    continue
            return row["file"]
        return None

    def duplicate(self, file: _Landed, sha: str, original: str) -> None:
        """Record a landed file with the same bytes as one already staged: not ingested again."""
        self.remove_stale(file, sha)
        for root in (self.staging, self.quarantine):
            (_output_dir(root, file) / _output_name(file, sha)).unlink(missing_ok=True)
        try:
            rows = pq.read_metadata(file.path).num_rows
        except (OSError, pa.ArrowException):  # the bytes are those of a readable file; cannot happen
            rows = 0
        detail = f"same content (sha256 {sha[:8]}, {rows} rows) as {original}, whose rows were accepted; not ingested again"
        loaded = _Loaded(file, sha, DUPLICATE)
        self.rows[(file.table, file.rel)] = _manifest_row(loaded, 0, 0, DUPLICATE, detail, self.as_of)
        self.report.files_duplicate += 1
        self.report.rows_duplicate += rows
        logger.warning("%s: %s", file.rel, detail)

    def flush(self, batch: list[_Loaded], catalog_ids: pl.Series) -> None:
        """Validate a batch of files (one GE run), then write quarantine, staging and manifest."""
        frames = [b.frame for b in batch if b.status == "ok"]
        n_rows = sum(f.height for f in frames)
        logger.info("validate: %d rows from %d files", n_rows, len(batch))
        if frames:
            outcome = validate_transactions(
                pl.concat(frames, how="vertical"),
                catalog_ids,
                self.cfg,
                as_of=self.as_of,
                gx=self.gx,
                run_name=self.run_name,
            )
            if outcome.accepted.height + outcome.quarantined.height != n_rows:
                raise AssertionError(f"validation returned {outcome.rows_read} rows for {n_rows} read")
            accepted = outcome.accepted.partition_by(c.SOURCE_FILE, as_dict=True, maintain_order=True)
            quarantined = outcome.quarantined.partition_by(c.SOURCE_FILE, as_dict=True, maintain_order=True)
        else:
            accepted, quarantined = {}, {}
        empty_q = pl.DataFrame(schema={c.SOURCE_ROW: pl.Int64, c.REASON: pl.String})

        # Per-file results, then the partition verdict.
        results: dict[str, tuple[_Loaded, pl.DataFrame | None, pl.DataFrame]] = {}
        by_partition: dict[str, list[str]] = defaultdict(list)
        for b in batch:
            by_partition[b.file.partition].append(b.file.rel)
            if b.status == "ok":
                acc = accepted.get((b.file.rel,))
                q = quarantined.get((b.file.rel,), empty_q)
                results[b.file.rel] = (b, acc, q.select(c.SOURCE_ROW, c.REASON))
            elif b.status == REJECTED:
                results[b.file.rel] = (b, None, b.quarantine.select(c.SOURCE_ROW, c.REASON))
            else:
                results[b.file.rel] = (b, None, empty_q)

        n_staged = n_quarantined = 0
        for partition, rels in by_partition.items():
            loads = [results[r][0] for r in rels]
            read = sum(b.rows for b in loads if b.status != UNREADABLE)
            reasons = pl.concat([results[r][2][c.REASON] for r in rels])
            n_q = reasons.len()
            rules = _top_rules(reasons)
            # the share judges the rows of readable, well-formed files: a rejected file (missing
            # column, unsupported type) fails on its own and does not sink the day's other files
            ok_read = sum(b.rows for b in loads if b.status == "ok")
            ok_q = sum(results[r][2].height for r in rels if results[r][0].status == "ok")
            share = ok_q / ok_read if ok_read else 0.0
            over = share > self.cfg.max_failed_share
            q_dir = self.quarantine / c.TRANSACTIONS.name / f"dt={partition}"
            if over:
                self.report.errors.append(
                    f"transactions partition dt={partition}: {ok_q} of {ok_read} rows quarantined ({share:.1%}) > "
                    f"max_failed_share {self.cfg.max_failed_share:.1%}; files: {', '.join(rels)}; "
                    f"top rules: {_format_rules(rules)}; accepted rows not staged; quarantine: {q_dir}"
                )
            for rel in rels:
                b, acc, q = results[rel]
                file = b.file
                self.remove_stale(file, b.sha)
                name = _output_name(file, b.sha)
                staged_path = _output_dir(self.staging, file) / name
                q_path = _output_dir(self.quarantine, file) / name
                if b.status == UNREADABLE:
                    self.record(b, 0, 0, UNREADABLE, b.detail)
                    self.report.errors.append(f"{rel} (partition dt={partition}): {b.detail}")
                    continue
                if b.status == REJECTED:
                    quarantine_frame = b.quarantine
                    self.report.errors.append(
                        f"{rel} (partition dt={partition}): {b.detail} "
                        f"(rule {b.quarantine[c.REASON][0]}); quarantine: {q_path}"
                    )
                elif q.height:
                    quarantine_frame = _quarantine_rows(file, c.TRANSACTIONS, q)
                else:
                    quarantine_frame = None
                if quarantine_frame is not None and quarantine_frame.height:
                    _write_frame(q_path, quarantine_frame)
                    n_quarantined += quarantine_frame.height
                else:
                    q_path.unlink(missing_ok=True)
                n_acc = 0 if acc is None else acc.height
                file_rules = _format_rules(_top_rules(q[c.REASON]))
                if b.status == REJECTED:
                    status, detail = FAILED, b.detail
                elif over:
                    status = FAILED
                    detail = (
                        f"partition quarantined share {share:.1%} > max_failed_share "
                        f"{self.cfg.max_failed_share:.1%}; accepted rows not staged; rules: {file_rules}"
                    )
                else:
                    status = INGESTED
                    detail = f"{q.height} rows quarantined: {file_rules}" if q.height else None
                if status == INGESTED and n_acc:
                    _write_table(staged_path, _contract_table(acc, c.TRANSACTIONS, file, b.sha))
                    n_staged += n_acc
                else:
                    staged_path.unlink(missing_ok=True)
                self.record(b, n_acc, q.height, status, detail)
            if all(b.status == UNREADABLE for b in loads):
                status = UNREADABLE
            elif over or any(b.status != "ok" for b in loads):
                status = FAILED  # good files of a partition with a broken one are still staged
            else:
                status = INGESTED
            self.report.partitions.append(
                PartitionStats(
                    c.TRANSACTIONS.name, partition, len(rels), read, read - n_q, n_q, status, rules
                )
            )
        self.write_manifest()
        logger.info(
            "write: %d rows staged, %d rows quarantined, manifest %s", n_staged, n_quarantined, self.manifest_path
        )

    def data_docs(self) -> Path | None:
        index = data_docs_index(self.gx_dir)
        return index if index.exists() else None


def _staged_sha(path: Path) -> str | None:
    if not path.exists():
        return None
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(_META_SHA)
    return value.decode() if value else None


def ingest(
    landing_dir: Path,
    staging_dir: Path,
    quarantine_dir: Path,
    manifest_path: Path,
    gx_dir: Path,
    cfg: ValidationConfig,
    as_of: date,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> IngestReport:
    """Validate new landed files into staging and quarantine; record them in the manifest.

    Transactions partitions dated before ``as_of`` only. Rerun-safe: files already
    ingested with the same sha256 are skipped, and a file with the same bytes as one
    already staged is recorded as ``duplicate``, not ingested again. Raises IngestError
    (with ``.report``) after all writes when a partition exceeds ``cfg.max_failed_share``,
    a file misses a required column, a file is unreadable, landed data lies outside a
    ``dt=YYYY-MM-DD`` partition, or the catalog snapshot fails (unreadable, a missing
    column, no rows, no valid row, or too many quarantined). Not safe to call from two
    processes on one data directory at once: ``pipeline.ingest_landing`` holds the ingest lock.
    """
    run = _Run(landing_dir, staging_dir, quarantine_dir, manifest_path, gx_dir, cfg, as_of, batch_rows)
    stale = remove_stale_temp_files(run.staging, run.quarantine) + len(
        remove_stale_temp(run.manifest_path.parent, f".{run.manifest_path.name}.*.tmp", _tmp_pid)
    )
    if stale:
        logger.info("removed %d temporary file(s) left by interrupted runs", stale)
    logger.info("ingest as_of %s: landing %s, manifest has %d files", as_of, run.landing, len(run.rows))
    catalog_ids = run.catalog()
    run.transactions(catalog_ids)
    report = run.report
    report.data_docs = run.data_docs()
    logger.info(
        "ingest as_of %s done: %d files seen, %d ingested, %d skipped, %d failed; rows %d read, "
        "%d accepted, %d quarantined; data docs %s",
        as_of, report.files_seen, report.files_ingested, report.files_skipped, report.files_failed,
        report.rows_read, report.rows_accepted, report.rows_quarantined, report.data_docs,
    )
    if report.errors:
        raise IngestError(
            f"ingest as_of {as_of}: {len(report.errors)} problem(s); quarantine and manifest are written:\n  - "
            + "\n  - ".join(report.errors),
            report,
        )
    return report


# --- readers for downstream ------------------------------------------------------------------


def read_staged_transactions(staging_dir: Path, start: date, end: date) -> pl.LazyFrame:
    """Accepted transactions with partition date in [start, end), as contracts.TRANSACTIONS.

    Lazy: filters and projections reach the Parquet reader. Empty (with the schema) when
    no partition is staged in the window.
    """
    schema = c.TRANSACTIONS.polars_schema
    files = [
        f
        for day, d in _partition_dirs(Path(staging_dir) / c.TRANSACTIONS.name)
        if start <= day < end
        for f in _visible_parquet(d)
    ]
    if not files:
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet(files, schema=schema, hive_partitioning=False, glob=False)


def read_staged_catalog(staging_dir: Path) -> pl.DataFrame:
    """The accepted rows of the current catalog snapshot, as contracts.CATALOG."""
    path = Path(staging_dir) / c.CATALOG.name / CATALOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no staged catalog at {path}; run ingest first")
    return pl.from_arrow(c.CATALOG.conform(pq.read_table(path)))
