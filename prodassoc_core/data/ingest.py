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

This module runs the steps (the catalog, then the transactions) and owns their failure
(``IngestError``); each step's work lives in its own module:

* discover: ``landing`` (landed files and partitions, misplaced data, sha256)
* read: ``loading`` (a landed file into its contract, with lineage; quarantine's landed values)
* validate: ``verdicts`` (one validation run per batch, split per file; partition and catalog verdicts)
* reconcile: ``reconcile`` (row counts; the already-staged content that covers a duplicate file)
* stage: ``staging`` (output paths, atomic writes, stale temporary files, readers of staged rows)
* record: ``manifest`` (the manifest, ``IngestReport``, ``PartitionStats``, the run's ``Ledger``)

With a Spark session (``engine: spark``), transactions are read and validated by ``spark_ingest``
(Spark reads the files that follow the contract's types, GE's Spark datasource validates them);
every other step, and so every output, is the same code.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import polars as pl

from prodassoc_core.data import contracts as c
from prodassoc_core.data import spark_ingest
from prodassoc_core.data.landing import Landed, current_snapshot, find_transactions, sha256
from prodassoc_core.data.loading import REJECTED, UNREADABLE, Loaded, load, quarantine_rows, with_ignored
from prodassoc_core.data.manifest import (
    DUPLICATE,
    FAILED,
    INGESTED,
    IngestReport,
    Ledger,
    ManifestError,
    PartitionStats,
    read_manifest,
)
from prodassoc_core.data.reconcile import covering, duplicate_detail, landed_rows
from prodassoc_core.data.staging import (
    CATALOG_FILE,
    Outputs,
    contract_table,
    footer_rows,
    read_staged_catalog,
    read_staged_transactions,
    remove_stale_temp_files,
    set_aside,
    staged_catalog_path,
    staged_sha,
    tmp_pid,
    write_frame,
    write_table,
)
from prodassoc_core.data.validation import (
    GxSuites, data_docs_index, gx_suites, stored_results, validate_catalog, validate_transactions,
)
from prodassoc_core.data.verdicts import (
    FileResult,
    PartitionVerdict,
    by_partition,
    catalog_refusal,
    catalog_shrink_refusal,
    format_rules,
    judge_partition,
    top_rules,
    validate_batch,
)
from prodassoc_core.data.warehouse import remove_stale_temp
from prodassoc_core.ops import ValidationConfig

__all__ = [  # the entry point, and what a caller reads of its results (defined in the step modules)
    "CATALOG_FILE", "DEFAULT_BATCH_ROWS", "DUPLICATE", "FAILED", "INGESTED", "REJECTED", "UNREADABLE",
    "IngestError", "IngestReport", "ManifestError", "PartitionStats", "ingest", "read_manifest", "read_staged_catalog",
    "read_staged_transactions", "remove_stale_temp_files",
]

logger = logging.getLogger("prodassoc.ingest")

DEFAULT_BATCH_ROWS = 1_000_000


class IngestError(RuntimeError):
    """The run finished its writes but some partitions or files failed; ``report`` says what."""

    def __init__(self, message: str, report: "IngestReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


# --- the run ----------------------------------------------------------------------------------


class _Run:
    """What the steps of one ingest call share: settings, outputs, the ledger, the GE context."""

    def __init__(self, landing, staging, quarantine, manifest_path, gx_dir, cfg, as_of, batch_rows, spark=None):
        self.landing = Path(landing)
        self.spark = spark  # engine: spark: transactions read and validated as Spark jobs (spark_ingest)
        self.outputs = Outputs(Path(staging), Path(quarantine))
        self.ledger = Ledger(manifest_path, as_of)
        self.report = self.ledger.report
        self.cfg, self.as_of, self.batch_rows = cfg, as_of, batch_rows
        self.run_name = f"ingest-{as_of.isoformat()}"
        self.gx_dir = Path(gx_dir)
        self._gx: GxSuites | None = None

    @property
    def gx(self) -> GxSuites:
        if self._gx is None:  # GE import + context set-up only when something is validated
            self._gx = gx_suites(self.gx_dir, self.cfg.docs_index_results)
        return self._gx

    def remove_stale(self, file: Landed, sha: str) -> None:
        """Drop outputs of an earlier version of this file (and staged rows of a failed one)."""
        prev = self.ledger.previous(file)
        if prev is not None and prev["sha256"] != sha:
            self.outputs.remove(file, prev["sha256"])

    def set_aside(self, path: Path) -> Path:
        """Move a damaged output aside (``<name>.damaged-as_of=<as_of>``, bytes kept); where it went."""
        return set_aside(path, f"damaged-as_of={self.as_of.isoformat()}")

    def fail_now(self, message: str) -> None:
        """Stop the run on ``message``: the manifest is written, the error carries the report."""
        self.ledger.write()
        self.report.errors.append(message)
        raise IngestError(f"ingest as_of {self.as_of}: {message}", self.report)

    def data_docs(self, *, failing: bool = False) -> Path | None:
        """The Data Docs index, with this run's validation results rendered (once per run); None
        with ``validation.data_docs`` off. ``failing``: the run is stopping on an error, which a
        failed build must not replace (it is logged instead)."""
        if not self.cfg.data_docs:  # validation.data_docs off: results stored, not rendered
            if self._gx is not None:
                self._gx.skip_docs()
            return None
        index = data_docs_index(self.gx_dir)
        gx = self._gx
        if gx is None and not index.exists() and stored_results(self.gx_dir):
            gx = self.gx  # nothing validated this run, but the site lost its index (a build that failed)
        if gx is not None:
            try:
                gx.build_docs()
            except Exception as exc:
                if not failing:
                    raise
                logger.warning("Data Docs not rebuilt for the failed run (%s: %s)", type(exc).__name__, exc)
        return index if index.exists() else None


# --- catalog ----------------------------------------------------------------------------------


class _CatalogStep:
    """The current catalog snapshot: reused when unchanged, else validated and staged whole, or the run fails."""

    def __init__(self, run: _Run) -> None:
        self.run, self.report, self.ledger = run, run.report, run.ledger
        self.staged = staged_catalog_path(run.outputs.staging)

    def __call__(self) -> pl.Series:
        """Ingest the current catalog snapshot if new; return the accepted product ids."""
        run = self.run
        self.check_staged()
        file = current_snapshot(run.landing)
        if file is None:
            if self.staged.exists():
                logger.info("catalog: no snapshot in landing; using staged %s", self.staged)
                return read_staged_catalog(run.outputs.staging)[c.PRODUCT_ID]
            raise IngestError(f"no catalog snapshot in {run.landing / c.CATALOG.name} and none staged")
        self.report.files_seen += 1
        self.report.catalog_file = file.rel
        sha = sha256(file.path)
        if self.ledger.already_ingested(file, sha) and staged_sha(self.staged) == sha:
            self.report.files_skipped += 1
            logger.info("catalog: %s unchanged (sha %s); reusing staged catalog", file.rel, sha[:8])
            return read_staged_catalog(run.outputs.staging)[c.PRODUCT_ID]
        return self.ingest(file, sha)

    def check_staged(self) -> None:
        """A staged catalog that cannot be read (damaged outside prodassoc) is set aside; the
        current snapshot is then ingested again from the landing zone."""
        if self.staged.exists() and footer_rows(self.staged) is None:
            aside = self.run.set_aside(self.staged)
            note = f"{self.staged.name}: the staged catalog is unreadable (moved to {aside}); ingested again from the landing zone"
            self.report.restaged.append(note)
            logger.warning("catalog: %s", note)

    def ingest(self, file: Landed, sha: str) -> pl.Series:
        """Load, validate and stage a new snapshot; fail the run if it may not replace the staged one."""
        run = self.run
        run.remove_stale(file, sha)
        loaded = load(file, c.CATALOG, sha)
        quarantine_path = run.outputs.quarantine_path(file, loaded.sha)
        self.refuse_unloaded(loaded, quarantine_path)
        outcome = validate_catalog(loaded.frame, cfg=run.cfg, gx=run.gx, run_name=run.run_name)
        n_acc, n_q = outcome.accepted.height, outcome.quarantined.height
        rules = top_rules(outcome.quarantined[c.REASON])
        if n_q:
            write_frame(quarantine_path, quarantine_rows(file, c.CATALOG, outcome.quarantined))
        else:
            quarantine_path.unlink(missing_ok=True)
        refusal = catalog_refusal(loaded, n_acc, n_q, rules, run.cfg.max_failed_share, quarantine_path)
        if refusal is None and self.staged.exists():
            staged_ids = read_staged_catalog(run.outputs.staging)[c.PRODUCT_ID]
            refusal = catalog_shrink_refusal(file.rel, outcome.accepted[c.PRODUCT_ID], staged_ids,
                                             run.cfg.max_catalog_shrink)
        if refusal is not None:
            self.verdict(loaded, n_acc, n_q, FAILED, refusal[0], rules)
            run.fail_now(refusal[1])
        accepted = outcome.accepted.sort(c.PRODUCT_ID)
        write_table(self.staged, contract_table(accepted, c.CATALOG, file, loaded.sha))
        self.verdict(loaded, n_acc, n_q, INGESTED,
                     with_ignored(f"{n_q} rows quarantined: {format_rules(rules)}" if n_q else None, loaded), rules)
        if loaded.ignored:
            logger.warning("catalog: %s: %s", file.rel, with_ignored(None, loaded))
        self.ledger.write()
        logger.info("catalog: %s -> %d accepted, %d quarantined; staged %s", file.rel, n_acc, n_q, self.staged)
        return accepted[c.PRODUCT_ID]

    def refuse_unloaded(self, loaded: Loaded, quarantine_path: Path) -> None:
        """Fail the run on a snapshot that is unreadable, misses a column, or has no rows."""
        rel = loaded.file.rel
        if loaded.status == UNREADABLE:
            self.verdict(loaded, 0, 0, UNREADABLE, loaded.detail)
            self.run.fail_now(f"catalog snapshot {rel}: {loaded.detail}")
        if loaded.status == REJECTED:
            write_frame(quarantine_path, loaded.quarantine)
            rules = top_rules(loaded.quarantine[c.REASON])
            self.verdict(loaded, 0, loaded.rows, FAILED, loaded.detail, rules)
            self.run.fail_now(f"catalog snapshot {rel}: {loaded.detail} ({format_rules(rules)}); "
                              f"quarantine: {quarantine_path}")
        if loaded.rows == 0:
            self.verdict(loaded, 0, 0, FAILED, "no rows")
            self.run.fail_now(
                f"catalog snapshot {rel} has no rows; a snapshot must list every product. "
                f"Staged catalog left unchanged"
            )

    def verdict(self, loaded: Loaded, accepted: int, quarantined: int, status: str, detail: str | None,
                rules: tuple[tuple[str, int], ...] = ()) -> None:
        """Record the snapshot's manifest row and its partition in the report."""
        self.ledger.record(loaded, accepted, quarantined, status, detail)
        self.report.partitions.append(
            PartitionStats(c.CATALOG.name, loaded.file.partition, 1, loaded.rows, accepted, quarantined, status, rules)
        )


# --- transactions -----------------------------------------------------------------------------


class _TransactionsStep:
    """Transaction files of days before as_of: new or changed ones validated in batches and staged."""

    def __init__(self, run: _Run, catalog_ids: pl.Series) -> None:
        self.run, self.report, self.ledger, self.outputs = run, run.report, run.ledger, run.outputs
        self.catalog_ids = catalog_ids
        self.ignored: set[str] = set()  # columns not in the contract, of the new files
        self.files_ignoring = 0  # new files with such columns

    def __call__(self) -> None:
        run, r = self.run, self.report
        forgotten = self.check_staged()
        found = find_transactions(run.landing, run.as_of)
        r.errors.extend(found.misplaced)
        r.files_deferred += found.deferred
        files = found.files
        r.files_seen += len(files)
        before = (r.files_ingested, r.files_skipped, r.files_failed)
        logger.info(
            "transactions: %d files in %d partitions before %s (%d files on/after it deferred)",
            len(files), len(found.pending), run.as_of, r.files_deferred,
        )
        shas = {file.rel: sha256(file.path) for file in files}
        todo = files
        while todo:  # a file held back (same bytes as another new file) waits for that file's verdict
            todo = self.process(todo, shas)
        if r.files_duplicate or forgotten:  # recorded without a flush: persist them
            self.ledger.write()
        if self.ignored:
            logger.warning("transactions: %d file(s) have columns not in the contract, not read: %s (the manifest's "
                           "detail names each file's)", self.files_ignoring, ", ".join(sorted(self.ignored)))
        logger.info(
            "transactions: %d files ingested, %d skipped (unchanged), %d failed",
            r.files_ingested - before[0], r.files_skipped - before[1], r.files_failed - before[2],
        )

    def check_staged(self) -> int:
        """Outputs the manifest counts that are missing, unreadable, or hold other than the rows it
        recorded (removed or damaged outside prodassoc), for days before as_of: staged (accepted)
        and quarantined rows alike. A damaged file is set aside, and the landed file is ingested
        again in this run. With the landed file gone too, the run fails saying which rows left
        (once: the manifest then stops counting them). Reads each output's footer (~0.1 ms a
        file). Returns how many manifest rows it dropped."""
        run, forgotten = self.run, 0
        for row in self.ledger.with_outputs(c.TRANSACTIONS.name):
            if row["partition"] >= run.as_of.isoformat():
                continue
            file = Landed(row["table"], run.landing / row["file"], row["file"], row["partition"])
            outputs = (("staged", "accepted", self.outputs.staged_path(file, row["sha256"]), row["rows_accepted"]),
                       ("quarantined", "quarantined", self.outputs.quarantine_path(file, row["sha256"]),
                        row["rows_quarantined"]))
            problems = [self.damaged(kind, what, path, expected) for kind, what, path, expected in outputs if expected]
            problems = [p for p in problems if p is not None]
            if not problems:
                continue
            self.ledger.forget(file)
            forgotten += 1
            problem = "; ".join(problems)
            if file.path.is_file():
                note = f"{file.rel}: {problem}; ingested again from the landing zone"
                self.report.restaged.append(note)
                logger.warning("transactions: %s", note)
            else:
                self.report.errors.append(
                    f"{file.rel}: {problem}, and the landed file is gone: {row['rows_accepted']:,} accepted and "
                    f"{row['rows_quarantined']:,} quarantined rows left the data dir; land the file again and rerun "
                    f"to restore them")
        return forgotten

    def damaged(self, kind: str, what: str, path: Path, expected: int) -> str | None:
        """What is wrong with an output that should hold ``expected`` rows (set aside if it is
        there); None when it holds them."""
        found = footer_rows(path)
        if found == expected:
            return None
        problem = "missing" if not path.exists() else "unreadable" if found is None else \
            f"{found:,} rows, not the {expected:,} {what}"
        if path.exists():
            problem += f" (moved to {self.run.set_aside(path)})"
        return f"its {kind} rows are {problem}"

    def process(self, files: list[Landed], shas: dict[str, str]) -> list[Landed]:
        """Validate and stage ``files`` (in partition order); returns the files held back.

        A file is skipped as ``duplicate`` only when its bytes are those of a file whose rows
        were *accepted* and are still staged (``reconcile.covering``). A second new file with the
        same bytes as one processed in this call is held back until that one's verdict is known:
        a copy of content that was quarantined (a misfiled copy) must not hide the real file.
        """
        batch: list[Loaded] = []
        batch_rows = 0
        claimed: set[str] = set()
        held: list[Landed] = []
        by_sha = self.ledger.accepted_by_sha(c.TRANSACTIONS.name)
        for i, file in enumerate(files):
            sha = shas[file.rel]
            if self.ledger.already_ingested(file, sha):
                self.report.files_skipped += 1
            elif (original := covering(file, sha, shas, by_sha.get(sha, []), self.run.landing,
                                       self.outputs.staging)) is not None:
                self.duplicate(file, sha, original)
            elif sha in claimed:
                held.append(file)
            else:
                claimed.add(sha)
                loaded = (spark_ingest.probe if self.run.spark is not None else load)(file, c.TRANSACTIONS, sha)
                self.ignored.update(loaded.ignored)
                self.files_ignoring += bool(loaded.ignored)
                batch.append(loaded)
                batch_rows += loaded.rows
            last_of_partition = i + 1 == len(files) or files[i + 1].partition != file.partition
            if last_of_partition and batch_rows >= self.run.batch_rows:  # whole partitions: the share needs them all
                self.flush(batch)
                batch, batch_rows = [], 0
        if batch:
            self.flush(batch)
        return held

    def duplicate(self, file: Landed, sha: str, original: str) -> None:
        """Record a landed file with the same bytes as one already staged: not ingested again."""
        self.run.remove_stale(file, sha)
        self.outputs.remove(file, sha)
        rows = landed_rows(file.path)
        detail = duplicate_detail(sha, rows, original)
        self.ledger.record_duplicate(file, sha, rows, detail)
        logger.warning("%s: %s", file.rel, detail)

    def flush(self, batch: list[Loaded]) -> None:
        """Validate a batch of files (one GE run), then write quarantine, staging and manifest."""
        run = self.run
        if run.spark is not None:
            results = spark_ingest.transactions_validator(
                run.spark, self.catalog_ids, run.cfg, run.as_of, run.gx, run.run_name)(batch)
        else:
            results = validate_batch(batch, lambda frame: validate_transactions(
                frame, self.catalog_ids, run.cfg, as_of=run.as_of, gx=run.gx, run_name=run.run_name))
        n_staged = n_quarantined = 0
        for partition, rels in by_partition(batch).items():
            verdict = judge_partition(partition, [results[rel] for rel in rels], run.cfg.max_failed_share)
            if verdict.over:
                q_dir = run.outputs.quarantine / c.TRANSACTIONS.name / f"dt={partition}"
                self.report.errors.append(verdict.error(q_dir))
            for result in verdict.results:
                staged, quarantined = self.stage(result, verdict)
                n_staged += staged
                n_quarantined += quarantined
            self.report.partitions.append(verdict.stats())
        self.ledger.write()
        logger.info(
            "write: %d rows staged, %d rows quarantined, manifest %s", n_staged, n_quarantined, self.ledger.path
        )

    def stage(self, result: FileResult, verdict: PartitionVerdict) -> tuple[int, int]:
        """Write one file's quarantine and (if its day passed) its accepted rows; record it.

        Returns (rows staged, rows quarantined) written.
        """
        b, acc, q = result
        file = b.file
        self.run.remove_stale(file, b.sha)
        staged_path = self.outputs.staged_path(file, b.sha)
        q_path = self.outputs.quarantine_path(file, b.sha)
        where = f"{file.rel} (partition dt={verdict.partition})"
        if b.status == UNREADABLE:
            self.ledger.record(b, 0, 0, UNREADABLE, b.detail)
            self.report.errors.append(f"{where}: {b.detail}")
            return 0, 0
        if b.status == REJECTED:
            quarantine_frame = b.quarantine
            self.report.errors.append(f"{where}: {b.detail} (rule {b.quarantine[c.REASON][0]}); quarantine: {q_path}")
        else:
            quarantine_frame = quarantine_rows(file, c.TRANSACTIONS, q) if q.height else None
        n_quarantined = 0
        if quarantine_frame is not None and quarantine_frame.height:
            write_frame(q_path, quarantine_frame)
            n_quarantined = quarantine_frame.height
        else:
            q_path.unlink(missing_ok=True)
        n_acc = 0 if acc is None else acc.height
        status, detail = verdict.file_status(result)
        n_staged = 0
        if status == INGESTED and n_acc:
            write_table(staged_path, contract_table(acc, c.TRANSACTIONS, file, b.sha))
            n_staged = n_acc
        else:
            staged_path.unlink(missing_ok=True)
        self.ledger.record(b, n_acc, q.height, status, detail)
        return n_staged, n_quarantined


# --- the entry point --------------------------------------------------------------------------


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
    spark=None,
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

    ``spark``: a Spark session (``engine: spark``): transaction files are read and validated as
    Spark jobs (``spark_ingest``), with the same outputs; None: all in this process.
    """
    run = _Run(landing_dir, staging_dir, quarantine_dir, manifest_path, gx_dir, cfg, as_of, batch_rows, spark)
    manifest = run.ledger.path
    stale = remove_stale_temp_files(run.outputs.staging, run.outputs.quarantine) + len(
        remove_stale_temp(manifest.parent, f".{manifest.name}.*.tmp", tmp_pid)
    )
    if stale:
        logger.info("removed %d temporary file(s) left by interrupted runs", stale)
    logger.info("ingest as_of %s: landing %s, manifest has %d files", as_of, run.landing, len(run.ledger.rows))
    report = run.report
    try:
        catalog_ids = _CatalogStep(run)()
        _TransactionsStep(run, catalog_ids)()
    except BaseException:  # whatever stops the run, what it validated is in the Data Docs
        report.data_docs = run.data_docs(failing=True)
        raise
    report.data_docs = run.data_docs(failing=bool(report.errors))  # errors: the IngestError below
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
