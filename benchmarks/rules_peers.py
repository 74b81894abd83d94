"""The peers of `prodassoc rules` as whole processes, for benchmarks/bench_mining.py.

    python benchmarks/rules_peers.py {arules,eclat,mlxtend} TRANSACTIONS.parquet RULES.parquet \
        --min-support S --min-confidence C --non-product-codes JSON --non-product-pattern REGEX

What a plain Python user of each library would write to do what `prodassoc rules --input
TRANSACTIONS.parquet --max-len none` does, as lean as that user could make it:

1. read the canonical transactions Parquet (polars, only the four columns the basket rules need);
2. make the same baskets: cancelled orders (order id starting with "C"), returns (quantity <= 0),
   lines with a price <= 0 and non-product codes dropped, one basket per order of its distinct
   products (the codes and pattern come on the command line, so that the peer pays for no
   prodassoc import; the benchmark passes BasketConfig's defaults). Baskets are not sorted;
3. mine rules A => c with a single-item consequent, at least 2 items, no maximum length:
   ``arules``  pyfim's simplified interface, fim.arules (thresholds in percent, as its docs say);
   ``eclat``   pyfim's fim.eclat(target='r'), the fastest pyfim call (the one prodassoc makes);
   ``mlxtend`` TransactionEncoder + fpgrowth + association_rules, single-item consequents kept;
4. write the rules to Parquet: antecedent (list), consequent, the counts the engine reports
   (pyfim: rule, antecedent and consequent baskets) and support, confidence, lift (mlxtend: its
   whole rules table but the item sets as lists). Rows and antecedents are left in the
   engine's order (prodassoc sorts both and adds rule ids and four more measures).

prodassoc's own process also checks the input against the contract, bounds the candidate rules
before mining (a second pyfim pass) and compares thresholds on exact integers.
"""

from __future__ import annotations

import argparse
import json

import polars as pl


def read_baskets(path: str, codes: list[str], pattern: str) -> list[list[str]]:
    lines = pl.read_parquet(path, columns=["order_id", "product_id", "quantity", "unit_price"])
    keep = (
        (pl.col("quantity") > 0)
        & ~pl.col("order_id").str.starts_with("C")
        & (pl.col("unit_price").is_null() | (pl.col("unit_price") > 0))
        & ~pl.col("product_id").is_in(codes)
    )
    if pattern:
        keep = keep & ~pl.col("product_id").str.contains(pattern)
    baskets = lines.filter(keep).group_by("order_id").agg(pl.col("product_id").unique())
    return baskets.get_column("product_id").to_list()


def pyfim_rules(baskets: list[list[str]], engine: str, min_support: float, min_confidence: float) -> pl.DataFrame:
    import fim

    if engine == "arules":
        rules = fim.arules(baskets, supp=min_support * 100, conf=min_confidence * 100, zmin=2,
                           report="abhscl", mode="o")
    else:
        rules = fim.eclat(baskets, target="r", supp=min_support * 100, conf=min_confidence * 100, zmin=2,
                          report="abhscl", mode="o")
    names = ["consequent", "antecedent", "n_rule", "n_antecedent", "n_consequent", "support", "confidence", "lift"]
    return pl.DataFrame(dict(zip(names, zip(*rules))) if rules else {n: [] for n in names})


def mlxtend_rules(baskets: list[list[str]], min_support: float, min_confidence: float, out: str) -> None:
    import pandas as pd
    from mlxtend.frequent_patterns import association_rules, fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    encoder = TransactionEncoder()
    onehot = pd.DataFrame(encoder.fit(baskets).transform(baskets), columns=encoder.columns_)
    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True)
    rules = association_rules(itemsets, num_itemsets=len(onehot), metric="confidence", min_threshold=min_confidence)
    rules = rules[rules["consequents"].map(len) == 1].copy()
    rules["antecedents"] = rules["antecedents"].map(sorted)
    rules["consequents"] = rules["consequents"].map(lambda items: next(iter(items)))
    rules.to_parquet(out, index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=["arules", "eclat", "mlxtend"])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--min-support", type=float, required=True)
    parser.add_argument("--min-confidence", type=float, required=True)
    parser.add_argument("--non-product-codes", type=json.loads, default=[], metavar="JSON")
    parser.add_argument("--non-product-pattern", default="", metavar="REGEX")
    args = parser.parse_args(argv)
    baskets = read_baskets(args.input, args.non_product_codes, args.non_product_pattern)
    if args.engine == "mlxtend":
        mlxtend_rules(baskets, args.min_support, args.min_confidence, args.output)
    else:
        pyfim_rules(baskets, args.engine, args.min_support, args.min_confidence).write_parquet(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
