"""Data in: contracts, importers, ingestion with validation and quarantine, baskets, storage, the warehouse.

Owns every table's schema (``contracts``), turning a source export into landed Parquet
(``importers``), validating and staging what lands, quarantining what fails (``ingest``, which
runs its steps: discover ``landing``, read ``loading``, validate ``verdicts`` with the rules and
Great Expectations of ``validation``, ``reconcile``, stage ``staging``, record ``manifest``),
grouping lines into baskets (``baskets``), the Spark session and Spark baskets of ``engine: spark``
(``spark``) and ingestion's read and validation as Spark jobs (``spark_ingest``), object-store
locations (``storage``) and the partitioned warehouse with its commit markers and views (``warehouse``).

May import: ops. Other packages import this one through the names below
(``from prodassoc_core.data import ...``), never through its modules' private names;
the names load on first use, so importing the package costs nothing until one is used.
"""

from prodassoc_core._exports import lazy_exports

MODULES = (
    "baskets", "contracts", "importers", "ingest", "landing", "loading", "manifest", "reconcile", "spark",
    "spark_ingest", "staging", "storage", "validation", "verdicts", "warehouse",
)
NAMES = {
    "ITEMS": "baskets",
    "load_basket_codes": "baskets",
    "load_baskets_file": "baskets",
    "ALL_TABLES": "contracts",
    "ASSOCIATED_PRODUCT_ID": "contracts",
    "ASSOCIATION_RULES": "contracts",
    "BRAND": "contracts",
    "BUNDLES": "contracts",
    "CATALOG": "contracts",
    "CATEGORY": "contracts",
    "DESCRIPTION": "contracts",
    "OPTIONAL_TABLES": "contracts",
    "ORDERED_AT": "contracts",
    "ORDER_ID": "contracts",
    "PRODUCT_ASSOCIATIONS": "contracts",
    "PRODUCT_EMBEDDINGS": "contracts",
    "PRODUCT_ID": "contracts",
    "in_rank_order": "contracts",
    "PUBLISHED_TABLES": "contracts",
    "TITLE": "contracts",
    "TRANSACTIONS": "contracts",
    "quarantine_schema": "contracts",
    "read_basket_csv": "importers",
    "SparkUnavailableError": "spark",
    "check_spark_available": "spark",
    "spark_storage_errno": "spark",
    "IngestError": "ingest",
    "StorageError": "warehouse",
    "fault_point": "warehouse",
    "remove_stale_temp": "warehouse",
    "write_json": "warehouse",
}

__all__, __getattr__ = lazy_exports(__name__, MODULES, NAMES)
