"""What `make demo` prints after the nightly: what was served and why, top associations with titles
and explanations, cold-start products' associations, bundles, the quarantine, and where every
artefact lives. Reads only the published views and the run's serving plan.

    .venv/bin/python scripts/demo_report.py DATA_DIR AS_OF
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 72 - len(title)))


def main(data_dir: str, as_of: str) -> None:
    data = Path(data_dir)
    served = json.loads((data / "runs" / f"as_of={as_of}" / "serving.json").read_text())
    section(f"What the nightly of {as_of} served")
    print(served["served"])
    print(f"classic method: {served['classic_reason']}")
    print(f"models: {served['reason']}")

    with duckdb.connect(str(data / "prodassoc.duckdb"), read_only=True) as con:
        section("Top associations (rank 1, most co-purchase orders first)")
        for title, atitle, source, why in con.execute("""
            SELECT product_title, associated_title, source, coalesce(explanation, '')
            FROM latest_product_associations_named WHERE rank = 1
            ORDER BY n_rule DESC, product_id LIMIT 8""").fetchall():
            print(f"  {title} -> {atitle}  [{source}] {why}")

        section("Cold-start products (never sold in the window): what they are associated with")
        cold = con.execute("""
            SELECT product_id, product_title, list(associated_title ORDER BY rank)[1:3], any_value(explanation)
            FROM latest_product_associations_named WHERE is_cold_start
            GROUP BY product_id, product_title ORDER BY product_id LIMIT 4""").fetchall()
        if not cold:
            print("  none served: the classic method has no co-purchases for a product never sold, and no model"
                  " that passed the serving gate for cold products is served tonight")
        for pid, title, top, why in cold:
            print(f"  {title} [{pid}] -> {', '.join(top)}  ({why})")

        section("Bundles (ranked by orders beyond chance)")
        columns = {r[0] for r in con.execute("DESCRIBE latest_bundles_named").fetchall()}
        why = "explanation" if "explanation" in columns else "''"
        for rank, text, n, expl in con.execute(f"""
            SELECT bundle_rank, bundle_text, n_baskets, {why} FROM latest_bundles_named
            ORDER BY bundle_rank LIMIT 5""").fetchall():
            print(f"  {rank}. {text} ({n} orders){': ' + expl if expl else ''}")

        section("Quarantine (rows kept aside, with the rule they broke)")
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if "quarantine_transactions" in views:
            for reason, n in con.execute("""
                SELECT _reason, count(*) FROM quarantine_transactions GROUP BY 1 ORDER BY 2 DESC, 1""").fetchall():
                print(f"  {n:>4}  {reason}")
        else:
            print("  nothing quarantined")

    section("Where everything is")
    print(f"  tables (Parquet, by run date): {data / 'warehouse'}")
    print(f"  DuckDB views:  duckdb -readonly {data / 'prodassoc.duckdb'}   (e.g. latest_product_associations_named)")
    print(f"  Data Docs:     {data / 'gx' / 'uncommitted' / 'data_docs' / 'local_site' / 'index.html'}")
    print(f"  serving plan:  {data / 'runs' / f'as_of={as_of}' / 'serving.json'}")
    print(f"  MLflow UI:     .venv/bin/mlflow ui --backend-store-uri sqlite:///{(data / 'mlflow.db').resolve()}")
    print("  Prefect UI:    .venv/bin/prefect server start  (runs of `prodassoc deploy`ed flows; see README)")
    print(f"  in one look:   .venv/bin/prodassoc --data-dir {data} status")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
