"""Does validating transactions slow down as the catalog grows?

The ``in_catalog:product_id`` rule, two ways, in the same transactions suite on the same frames,
run side by side (alternating, fresh ephemeral GE contexts):

- **value_set**: GE's ``ExpectColumnValuesToBeInSet(product_id, value_set=<the catalog's ids>)``,
  the ids passed as an expectation parameter (prodassoc's rule before this benchmark);
- **derived**: prodassoc's rule: ``_in_catalog = product_id in <ids>`` computed in polars
  (``validation.in_catalog``), and GE's ``ExpectColumnValuesToBeInSet(_in_catalog, [True])``.

Prints the median seconds of one validation (GE checkpoint run, plus the polars column for the
derived rule) per catalog size, and their ratio. GE reads an expectation's configuration thousands
of times in a run and copies its arguments each time, so the value_set route costs about the
catalog's size times that.

    python benchmarks/bench_validation_catalog.py [--rows 1000] [--ids 100,1000,10000,50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime

import great_expectations as gx
import great_expectations.expectations as gxe
import polars as pl
from great_expectations.data_context.types.base import ProgressBarsConfig

from prodassoc_core.data import contracts as c
from prodassoc_core.data import validation

SUITE = "transactions"


def _frame(rows: int, ids: list[str]) -> pl.DataFrame:
    """``rows`` transaction lines over ``ids`` (every 10th product unknown), with the derived columns."""
    products = [ids[i % len(ids)] if i % 10 else f"UNKNOWN{i}" for i in range(rows)]
    ts = datetime(2024, 1, 2, 9)
    return pl.DataFrame({
        c.ORDER_ID: [f"o{i // 3}" for i in range(rows)], c.PRODUCT_ID: products, c.QUANTITY: [1] * rows,
        c.UNIT_PRICE: [1.0] * rows, c.CUSTOMER_ID: ["x"] * rows, c.ORDERED_AT: [ts] * rows,
        "_order_date": ["2024-01-02"] * rows, "_ordered_at_us": [0] * rows, c.PARTITION: ["2024-01-02"] * rows,
    })


def _checkpoint(ctx, expectations: list) -> gx.Checkpoint:
    source = ctx.data_sources.add_pandas("bench")
    batch = source.add_dataframe_asset(SUITE).add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(gx.ExpectationSuite(name=SUITE, expectations=expectations))
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=SUITE, data=batch, suite=suite))
    return ctx.checkpoints.add(gx.Checkpoint(name=SUITE, validation_definitions=[definition], actions=[],
                                             result_format={"result_format": "COMPLETE"}))


def _suite(route: str) -> list:
    """prodassoc's transactions suite, its in_catalog rule as ``route`` has it."""
    expectations = validation._SUITES[SUITE](gxe)
    if route == "value_set":
        expectations = [
            gxe.ExpectColumnValuesToBeInSet(column=c.PRODUCT_ID, value_set={"$PARAMETER": "catalog_ids"},
                                            meta=e.meta)
            if getattr(e, "column", None) == validation._IN_CATALOG else e
            for e in expectations
        ]
    return expectations


def _run(route: str, frame: pl.DataFrame, ids: list[str]) -> tuple[float, int]:
    """Seconds of one validation by ``route`` (set-up excluded) and its failing rows."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    checkpoint = _checkpoint(ctx, _suite(route))
    parameters = {"min_quantity": -100_000, "max_quantity": 100_000, "max_unit_price": 100_000.0,
                  "max_text_length": 1000, "as_of_us": 2**62}
    start = time.perf_counter()
    if route == "value_set":
        parameters["catalog_ids"] = sorted(ids)
    else:
        frame = frame.with_columns(validation.in_catalog(pl.col(c.PRODUCT_ID), ids).alias(validation._IN_CATALOG))
    result = checkpoint.run(batch_parameters={"dataframe": frame.to_pandas()}, expectation_parameters=parameters)
    seconds = time.perf_counter() - start
    failing = {
        len(r.result.get("unexpected_index_list") or [])
        for run in result.run_results.values() for r in run.results
        if r.expectation_config.meta.get("rule") == f"in_catalog:{c.PRODUCT_ID}"
    }
    return seconds, failing.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--ids", default="100,1000,10000,50000", help="catalog sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.rows} transaction rows; median of {args.repeats} runs, the two routes alternating")
    print(f"{'catalog ids':>11} | {'value_set s':>11} | {'derived s':>9} | value_set / derived")
    for n in (int(x) for x in args.ids.split(",")):
        ids = [f"P{i:06d}" for i in range(n)]
        frame = _frame(args.rows, ids)
        times: dict[str, list[float]] = {"value_set": [], "derived": []}
        for _ in range(args.repeats):
            failing = set()
            for route in times:
                seconds, found = _run(route, frame, ids)
                times[route].append(seconds)
                failing.add(found)
            assert len(failing) == 1, f"the routes disagree on the failing rows: {failing}"
        a, b = statistics.median(times["value_set"]), statistics.median(times["derived"])
        print(f"{n:>11,} | {a:>11.3f} | {b:>9.3f} | {a / b:.1f}x")


if __name__ == "__main__":
    main()
