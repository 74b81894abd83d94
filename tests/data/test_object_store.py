"""The s3:// warehouse and landing against a real S3-compatible server: ``moto_server`` on
loopback, started here and stopped by its pid. Publishing replaces a partition atomically
(injected faults and a killed writer leave the previous object), the landing is synced into
the local landing zone, and a nightly run publishes the same bytes locally and to S3."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from prodassoc_core.data import importers, storage, warehouse
from prodassoc_core.data.contracts import ALL_TABLES, PRODUCT_ASSOCIATIONS, PUBLISHED_TABLES
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import stages

from conftest import free_port, land, log_tail, start_process, stop_process, wait_http

AS_OF = date(2011, 11, 1)
RUN_DATE = date(2024, 1, 5)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """``moto_server`` on a free loopback port for this module; stopped by pid afterwards."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODASSOC_")}
    proc = start_process(["moto_server", "-H", "127.0.0.1", "-p", str(port)], env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/data.json", proc, log, timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, grace_s=10)


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, tmp_path) -> str:
    """A fresh bucket, with the AWS variables pointing at the local server."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 storage.WAREHOUSE_URL_ENV, storage.LANDING_URL_ENV, warehouse.FAULT_ENV):
        monkeypatch.delenv(name, raising=False)
    name = f"prodassoc-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(
        endpoint_override=s3_endpoint.split("://")[1], scheme="http", region="us-east-1", allow_bucket_creation=True
    ).create_dir(name)
    return name


def associations(n: int, tag: str) -> pa.Table:
    """A small product_associations table (contract-conform)."""
    given = {
        "product_id": [f"{tag}{i}" for i in range(n)],
        "associated_product_id": [f"{tag}{i + 1}" for i in range(n)],
        "rank": [1] * n,
        "score": [float(i) for i in range(n)],
        "method": ["count"] * n,
    }
    cols = {}
    for f in PRODUCT_ASSOCIATIONS.schema:
        if f.name in given:
            cols[f.name] = given[f.name]
        elif f.name in PRODUCT_ASSOCIATIONS.optional:
            cols[f.name] = [None] * n
        elif pa.types.is_integer(f.type):
            cols[f.name] = [1] * n
        else:
            cols[f.name] = [0.5] * n
    return pa.Table.from_pydict(cols, schema=PRODUCT_ASSOCIATIONS.schema)


def object_bytes(key: str) -> bytes:
    with storage.s3_filesystem().open_input_stream(key) as f:
        return f.read()


def tmp_objects(bucket: str, prefix: str = "wh") -> list[str]:
    sel = pafs.FileSelector(f"{bucket}/{prefix}/{warehouse.TMP_DIR}", allow_not_found=True)
    return [i.path for i in storage.s3_filesystem().get_file_info(sel) if i.type == pafs.FileType.File]


def test_locations_parse_and_reject(monkeypatch):
    loc = storage.parse_location("s3://bkt/some/prefix/")
    assert (loc.bucket, loc.prefix, loc.path) == ("bkt", "some/prefix", "bkt/some/prefix")
    assert storage.parse_location("s3://bkt").path == "bkt"
    for bad in ("/local/path", "gs://bkt/x", "s3:///nobucket", "s3://bkt/a/../b", "s3://bkt/x?versionId=1"):
        with pytest.raises(ValueError):
            storage.parse_location(bad)
    monkeypatch.delenv(storage.WAREHOUSE_URL_ENV, raising=False)
    monkeypatch.setenv(storage.LANDING_URL_ENV, "")
    assert storage.object_store_locations() == storage.ObjectStoreLocations(None, None)
    monkeypatch.setenv(storage.WAREHOUSE_URL_ENV, "/not/an/object/store")
    with pytest.raises(ValueError, match="PRODASSOC_DATA_DIR"):
        storage.object_store_locations()
    with pytest.raises(ValueError):
        storage.partition_key(loc, "../etc", RUN_DATE)


def test_publish_reads_back_and_a_second_publish_replaces_it(bucket, tmp_path):
    url = f"s3://{bucket}/wh"
    first, second = associations(5, "a"), associations(7, "b")
    result = storage.publish_partition(first, PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    key = f"{bucket}/wh/product_associations/run_date=2024-01-05/data.parquet"
    assert (result.rows, str(result.path)) == (5, f"s3://{key}")
    assert storage.read_partition(url, PRODUCT_ASSOCIATIONS, RUN_DATE).equals(first)
    assert storage.is_published(url, "product_associations", RUN_DATE)
    assert not storage.is_published(url, "product_associations", date(2024, 1, 6))
    # the same bytes as the local warehouse writes for the same table
    local = warehouse.write_partition(first, PRODUCT_ASSOCIATIONS, tmp_path / "wh", RUN_DATE)
    assert object_bytes(key) == local.path.read_bytes()

    storage.publish_partition(second, PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    assert storage.read_partition(url, PRODUCT_ASSOCIATIONS, RUN_DATE).equals(second)
    listing = storage.s3_filesystem().get_file_info(pafs.FileSelector(f"{bucket}/wh", recursive=True))
    assert sorted(i.path for i in listing if i.type == pafs.FileType.File) == [key]  # no temporaries left

    # a table off its contract is refused on read
    pq.write_table(pa.table({"x": [1]}), key, filesystem=storage.s3_filesystem())
    with pytest.raises(ValueError, match="does not match contract"):
        storage.read_partition(url, PRODUCT_ASSOCIATIONS, RUN_DATE)


@pytest.mark.parametrize("point", ["s3.before_upload", "s3.mid_upload", "s3.before_copy"])
def test_a_fault_before_the_copy_leaves_the_previous_object(bucket, monkeypatch, point):
    url = f"s3://{bucket}/wh"
    key = f"{bucket}/wh/product_associations/run_date=2024-01-05/data.parquet"
    storage.publish_partition(associations(5, "old"), PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    before = object_bytes(key)
    monkeypatch.setenv(warehouse.FAULT_ENV, f"{point}=raise")
    with pytest.raises(warehouse.InjectedFault):
        storage.publish_partition(associations(9, "new"), PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    assert object_bytes(key) == before
    assert tmp_objects(bucket) == []  # the partial temporary upload is removed again
    monkeypatch.delenv(warehouse.FAULT_ENV)
    storage.publish_partition(associations(9, "new"), PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    assert storage.read_partition(url, PRODUCT_ASSOCIATIONS, RUN_DATE).num_rows == 9


def test_a_writer_killed_mid_upload_leaves_the_previous_object(bucket, tmp_path):
    url = f"s3://{bucket}/wh"
    key = f"{bucket}/wh/product_associations/run_date=2024-01-05/data.parquet"
    storage.publish_partition(associations(5, "old"), PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    before = object_bytes(key)
    new = tmp_path / "new.parquet"
    pq.write_table(associations(9, "new"), new)
    code = (
        "import sys, pyarrow.parquet as pq; from datetime import date\n"
        "from prodassoc_core.data import storage; from prodassoc_core.data.contracts import PRODUCT_ASSOCIATIONS\n"
        "storage.publish_partition(pq.read_table(sys.argv[1]), PRODUCT_ASSOCIATIONS, sys.argv[2], date(2024, 1, 5))\n"
    )
    env = os.environ | {warehouse.FAULT_ENV: "s3.mid_upload=kill"}
    done = subprocess.run([sys.executable, "-c", code, str(new), url], env=env, capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert b"fault point s3.mid_upload reached" in done.stderr
    assert object_bytes(key) == before
    # a temporary object the killed writer may have left is removed once stale
    fs = storage.s3_filesystem()
    with fs.open_output_stream(f"{bucket}/wh/{warehouse.TMP_DIR}/otherhost-1-dead.parquet") as f:
        f.write(b"partial")
    storage.STALE_TMP_S, stale = 0.0, storage.STALE_TMP_S
    try:
        time.sleep(1.1)  # S3 last-modified has one-second resolution
        storage.publish_partition(pq.read_table(new), PRODUCT_ASSOCIATIONS, url, RUN_DATE)
    finally:
        storage.STALE_TMP_S = stale
    assert tmp_objects(bucket) == []
    assert storage.read_partition(url, PRODUCT_ASSOCIATIONS, RUN_DATE).num_rows == 9


def upload_dir(local: Path, bucket: str, prefix: str) -> None:
    pafs.copy_files(str(local), f"{bucket}/{prefix}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=storage.s3_filesystem())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nightly_run_syncs_s3_landing_and_publishes_to_s3_and_locally(bucket, monkeypatch, tmp_path, sample_cut):
    source = tmp_path / "source"
    importers.import_source(kind="online-retail", inputs=[sample_cut], landing_dir=source)
    upload_dir(source, bucket, "landing")
    monkeypatch.setenv(storage.LANDING_URL_ENV, f"s3://{bucket}/landing")
    monkeypatch.setenv(storage.WAREHOUSE_URL_ENV, f"s3://{bucket}/warehouse")
    settings = Settings(data_dir=tmp_path / "data")

    result = stages.run_nightly(settings, AS_OF)

    landed = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.parquet"))
    synced = sorted(p.relative_to(settings.landing_dir).as_posix() for p in settings.landing_dir.rglob("*.parquet"))
    assert synced == landed
    assert all(sha(source / rel) == sha(settings.landing_dir / rel) for rel in landed)
    assert result.ingest.files_ingested > 0 and result.ingest.rows_accepted > 0
    assert stages.is_published(settings, AS_OF)
    url = f"s3://{bucket}/warehouse"
    for written in result.published:
        contract = ALL_TABLES[written.table]
        remote = storage.read_partition(url, contract, AS_OF)
        assert remote.num_rows == written.rows > 0
        assert object_bytes(storage.partition_key(storage.parse_location(url), written.table, AS_OF)) == (
            written.path.read_bytes()
        )

    # analysts: DuckDB views over the object store through s3fs
    con = storage.connect_analyst(settings.duckdb_path)
    try:
        rows = {p.table: p.rows for p in result.published}
        assert con.execute("SELECT count(*) FROM s3_latest_association_rules").fetchone()[0] == rows[
            "association_rules"
        ]
        assert con.execute("SELECT count(*) FROM latest_association_rules").fetchone()[0] == rows["association_rules"]
        assert con.execute("SELECT DISTINCT run_date FROM s3_product_associations").fetchall() == [(AS_OF,)]
    finally:
        con.close()

    # a changed object is copied again and re-ingested; an object removed upstream stays locally
    fs = storage.s3_filesystem()
    changed = "transactions/dt=2011-10-03/part-0.parquet"
    table = pq.read_table(source / changed)
    pq.write_table(table.slice(0, table.num_rows - 10), f"{bucket}/landing/{changed}", filesystem=fs)
    fs.delete_file(f"{bucket}/landing/transactions/dt=2011-10-04/part-0.parquet")
    again = stages.run_nightly(settings, AS_OF)
    assert again.ingest.files_ingested == 1
    assert pq.read_metadata(settings.landing_dir / changed).num_rows == table.num_rows - 10
    assert (settings.landing_dir / "transactions/dt=2011-10-04/part-0.parquet").is_file()
    report = storage.sync_landing(f"s3://{bucket}/landing", settings.landing_dir)
    assert report.copied == [] and report.unchanged == len(landed) - 1


def test_a_failed_upload_fails_the_run_before_the_local_publish(bucket, monkeypatch, tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)  # a small synthetic landing zone: the publish is under test, not the data
    as_of = date(2024, 1, 7)
    monkeypatch.setenv(storage.WAREHOUSE_URL_ENV, f"s3://{bucket}/warehouse")
    monkeypatch.setenv(warehouse.FAULT_ENV, "s3.before_copy@2=raise")
    with pytest.raises(warehouse.InjectedFault):
        stages.run_nightly(settings, as_of)
    # one table reached the object store, none the local warehouse: the date is not published
    # (a backfill does not skip it) and the rerun publishes both copies
    assert not stages.is_published(settings, as_of)
    assert not any(warehouse.is_published(settings.warehouse_dir, t, as_of) for t in PUBLISHED_TABLES)
    monkeypatch.delenv(warehouse.FAULT_ENV)
    stages.run_nightly(settings, as_of)
    assert stages.is_published(settings, as_of)
    assert all(storage.is_published(f"s3://{bucket}/warehouse", t, as_of) for t in PUBLISHED_TABLES)
    assert tmp_objects(bucket, "warehouse") == []


def test_moto_log_has_no_server_errors(s3_endpoint, tmp_path_factory):
    """Guard: the server answered every request without a 5xx (a crash would hide behind retries)."""
    logs = list(Path(tmp_path_factory.getbasetemp()).glob("moto*/moto.log"))
    assert logs
    text = log_tail(logs[0], chars=10**7)
    assert '" 500 ' not in text and "Traceback" not in text
