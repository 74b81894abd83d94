"""The nightly run report: one self-contained HTML page per run (pure: frames and dicts in, HTML out).

What the page shows, top to bottom: what was served (classic or hybrid per segment, the model
versions and why), the run's counts (files, rows read / accepted / quarantined per table, the
quarantine rules that fired, the published partitions), the strongest rank-1 associations and the
top bundles with titles and explanations, an inline SVG of the association network of the top
products (a circle layout, deterministic), and what changed since the previous committed run
(pairs new to or dropped from the top-k lists, the biggest rank shifts) or "first run".

Self-contained: no external CSS, scripts, fonts or images; every value from the data is
HTML-escaped (titles hold ``&``, ``<``). The I/O (reading the partitions, writing the page) is
``prodassoc_core.pipeline.stages.write_run_report``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import polars as pl

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, PRODUCT_ID, baskets
from prodassoc_core.pipeline.run_summary import served_model, top_quarantine_rules

TOP_PAIRS = 15  # strongest rank-1 pairs shown
TOP_BUNDLES = 10
NETWORK_PRODUCTS = 20  # products drawn in the network picture
DIFF_TOP_K = 10  # "what changed" compares each product's top-k list
DIFF_ROWS = 10  # rows shown per change table

# the columns the report reads from product_associations (older partitions may lack the optional ones)
PAIR_COLUMNS = (PRODUCT_ID, ASSOCIATED_PRODUCT_ID, "rank", "score", "method", "n_rule", "lift", "confidence",
                "explanation", "source", "is_cold_start")
BUNDLE_COLUMNS = ("bundle_rank", "products", "titles", "n_baskets", "lift", "explanation")


def _e(value: object) -> str:
    return html.escape("–" if value is None else str(value))


def _num(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _title(titles: Mapping[str, str], product: str) -> str:
    return titles.get(product) or "(no title)"


def _ensure(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """``frame`` with every column of ``columns`` (null where a partition predates it)."""
    missing = [pl.lit(None).alias(c) for c in columns if c not in frame.columns]
    return frame.with_columns(missing) if missing else frame


def top_pairs(associations: pl.DataFrame, n: int = TOP_PAIRS) -> pl.DataFrame:
    """The ``n`` strongest rank-1 associations, one row per unordered pair (A->B and B->A are
    both rank 1 for mutual best matches: the stronger direction is kept). Sorted by score
    descending, ids breaking ties."""
    if associations.is_empty():
        return _ensure(associations, PAIR_COLUMNS)
    pair = pl.concat_list(pl.min_horizontal(PRODUCT_ID, ASSOCIATED_PRODUCT_ID),
                          pl.max_horizontal(PRODUCT_ID, ASSOCIATED_PRODUCT_ID))
    return (
        _ensure(associations, PAIR_COLUMNS)
        .filter(pl.col("rank") == 1)
        .sort(["score", PRODUCT_ID, ASSOCIATED_PRODUCT_ID], descending=[True, False, False])
        .with_columns(pair.alias("_pair"))
        .unique("_pair", keep="first", maintain_order=True)
        .drop("_pair")
        .head(n)
    )


@dataclass(frozen=True)
class RunDiff:
    """How the top-k lists changed between two runs. ``new``: pairs in this run's top-k lists
    and not the previous run's; ``dropped``: the reverse; ``shifts``: pairs in both whose rank
    moved (``shift`` = previous rank - rank: positive moved up), biggest first."""

    previous: date
    k: int
    new: pl.DataFrame  # product_id, associated_product_id, rank, score
    dropped: pl.DataFrame  # product_id, associated_product_id, rank, score (the previous run's)
    shifts: pl.DataFrame  # product_id, associated_product_id, previous_rank, rank, shift
    unchanged: int


def diff_runs(current: pl.DataFrame, previous: pl.DataFrame, previous_date: date, k: int = DIFF_TOP_K) -> RunDiff:
    """Compare the top-``k`` association lists of two runs (product_associations frames).

    Products present in only one run count too: their pairs are all new (or all dropped).
    Every frame is sorted deterministically: new by score desc, dropped by the previous
    score desc, shifts by |shift| desc, then ids.
    """
    keys = [PRODUCT_ID, ASSOCIATED_PRODUCT_ID]
    cols = [*keys, "rank", "score"]
    cur = current.select(cols).filter(pl.col("rank") <= k)
    prev = previous.select(cols).filter(pl.col("rank") <= k)
    ordered = [pl.col("score"), pl.col(PRODUCT_ID), pl.col(ASSOCIATED_PRODUCT_ID)]
    new = cur.join(prev, on=keys, how="anti").sort(ordered, descending=[True, False, False])
    dropped = prev.join(cur, on=keys, how="anti").sort(ordered, descending=[True, False, False])
    both = cur.join(prev.select(*keys, pl.col("rank").alias("previous_rank")), on=keys, how="inner")
    both = both.with_columns((pl.col("previous_rank") - pl.col("rank")).alias("shift"))
    shifts = (
        both.filter(pl.col("shift") != 0)
        .with_columns(pl.col("shift").abs().alias("_abs"))
        .sort(["_abs", PRODUCT_ID, ASSOCIATED_PRODUCT_ID], descending=[True, False, False])
        .select(*keys, "previous_rank", "rank", "shift")
    )
    return RunDiff(previous_date, k, new, dropped, shifts, both.height - shifts.height)


def network_products(associations: pl.DataFrame, n: int = NETWORK_PRODUCTS) -> list[str]:
    """The ``n`` products of the network picture: the ends of the strongest rank-1 pairs, in
    order of their best pair's score (ids breaking ties)."""
    best = (
        associations.filter(pl.col("rank") == 1)
        .sort(["score", PRODUCT_ID, ASSOCIATED_PRODUCT_ID], descending=[True, False, False])
    )
    out: list[str] = []
    for a, b in best.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID).iter_rows():
        for p in (a, b):
            if p not in out and len(out) < n:
                out.append(p)
        if len(out) >= n:
            break
    return out


def network_edges(associations: pl.DataFrame, products: Sequence[str]) -> list[tuple[str, str, float]]:
    """Undirected edges among ``products`` from their published associations (any rank): one per
    pair, the larger score of its two directions, sorted by the pair's ids."""
    inside = set(products)
    best: dict[tuple[str, str], float] = {}
    rows = associations.filter(pl.col(PRODUCT_ID).is_in(products) & pl.col(ASSOCIATED_PRODUCT_ID).is_in(products))
    for a, b, score in rows.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, "score").iter_rows():
        if a in inside and b in inside and a != b:
            key = (min(a, b), max(a, b))
            best[key] = max(best.get(key, float("-inf")), float(score))
    return sorted((a, b, s) for (a, b), s in best.items())


def network_svg(associations: pl.DataFrame, titles: Mapping[str, str], n: int = NETWORK_PRODUCTS,
                radius: int = 250) -> str:
    """An inline SVG of the association network of the top ``n`` products: nodes on a circle
    (in the order of ``network_products``, from 12 o'clock clockwise), an edge per published
    association between two of them, thicker for a higher score; each node labelled with its
    id and shortened title, the full title as its tooltip."""
    products = network_products(associations, n)
    if not products:
        return "<p>No associations published: nothing to draw.</p>"
    edges = network_edges(associations, products)
    # labels run sideways from the circle: room for ~28 characters each side
    width, height = 2 * radius + 420, 2 * radius + 60
    centre, middle = width / 2, height / 2
    pos = {
        p: (centre + radius * math.sin(2 * math.pi * i / len(products)),
            middle - radius * math.cos(2 * math.pi * i / len(products)))
        for i, p in enumerate(products)
    }
    top = max((s for _, _, s in edges), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="association network of the top {len(products)} products">']
    for a, b, s in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        width = 0.5 + 3.5 * max(s, 0.0) / top
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#4a78b0" '
                     f'stroke-opacity="0.6" stroke-width="{width:.2f}"><title>{_e(a)} – {_e(b)}: score '
                     f'{_e(_num(s, 3))}</title></line>')
    for p, (x, y) in pos.items():
        title = _title(titles, p)
        short = title if len(title) <= 24 else title[:23] + "…"
        anchor = "start" if x > centre + 1 else "end" if x < centre - 1 else "middle"
        dx = 9 if anchor == "start" else -9 if anchor == "end" else 0
        dy = -10 if y < middle and anchor == "middle" else 16 if anchor == "middle" else 4
        parts.append(f'<g><title>{_e(p)}: {_e(title)}</title><circle cx="{x:.1f}" cy="{y:.1f}" r="6" '
                     f'fill="#d9822b" stroke="#333"/><text x="{x + dx:.1f}" y="{y + dy:.1f}" '
                     f'text-anchor="{anchor}" font-size="11">{_e(p)} {_e(short)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str = "none") -> str:
    """A table of pre-escaped cells."""
    if not rows:
        return f"<p><em>{_e(empty)}</em></p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _product(titles: Mapping[str, str], product: str) -> str:
    return f"<code>{_e(product)}</code> {_e(_title(titles, product))}"


def _pair_explanation(row: Mapping) -> str:
    """The row's explanation; a classic row has none, so one line from its figures."""
    if row.get("explanation"):
        return _e(row["explanation"])
    figures = []
    if row.get("n_rule") is not None:
        figures.append(f"bought together in {row['n_rule']:,} orders")
    if row.get("lift") is not None:
        figures.append(f"{row['lift']:.1f}x as often as chance")
    if row.get("confidence") is not None:
        figures.append(f"{row['confidence']:.0%} of its orders hold the other")
    return _e("; ".join(figures) or "–") + " <small>(from the figures)</small>"


def served_section(served: Mapping) -> str:
    """What was served: the one-line summary, per segment, the classic choice and the models."""
    rows = [
        ("served", served_model(served)),
        ("warm products", served["segments"]["warm"]),
        ("cold-start products", served["segments"]["cold"]),
        ("classic method", served["classic"]),
        ("why this classic method", served["classic_reason"]),
        ("models", served["reason"]),
        ("student model", served.get("student_model") or "none"),
        ("GNN model", served.get("gnn_model") or "none"),
        ("models trained on data before", served.get("model_as_of") or "–"),
    ]
    return (f"<h2>What was served</h2><p class=\"served\">Served: <code>{_e(served_model(served))}</code> — "
            f"{_e(served['served'])}</p>" + _table(["", ""], [(_e(k), _e(v)) for k, v in rows]))


def counts_section(ingest: Mapping, published: Sequence[Mapping], basket_account: pl.DataFrame | None = None) -> str:
    """Files and rows of this run's ingestion per table, the quarantine breakdown, where the
    window's lines went (``basket_account``: baskets.line_account with the number of baskets), the
    published partitions."""
    files = [("files seen", ingest.get("files_seen", 0)), ("ingested", ingest.get("files_ingested", 0)),
             ("skipped (already ingested)", ingest.get("files_skipped", 0)), ("failed", ingest.get("files_failed", 0)),
             ("duplicate", ingest.get("files_duplicate", 0)),
             ("deferred (after as_of)", ingest.get("files_deferred", 0))]
    out = ["<h2>Counts</h2><p>What this run ingested (files ingested by earlier runs are skipped), what it "
           "quarantined and what it published.</p>",
           "<p>" + "; ".join(f"{_e(k)}: {v:,}" for k, v in files) + ".</p>"]
    if ingest.get("manifest_rebuilt"):
        out.append(f"<p class=\"warning\"><strong>Manifest rebuilt:</strong> {_e(ingest['manifest_rebuilt'])}.</p>")
    if ingest.get("restaged"):
        out.append("<p class=\"warning\"><strong>Re-ingested</strong> (staged files missing or damaged):</p><ul>"
                   + "".join(f"<li>{_e(note)}</li>" for note in ingest["restaged"]) + "</ul>")
    tables = sorted({p["table"] for p in ingest.get("partitions", ())})
    rows = []
    for table in tables:
        parts = [p for p in ingest["partitions"] if p["table"] == table]
        read, quarantined = sum(p["rows_read"] for p in parts), sum(p["rows_quarantined"] for p in parts)
        rows.append((_e(table), _num(read), _num(read - quarantined), _num(quarantined)))
    rows.append(("<strong>all</strong>", _num(ingest.get("rows_read", 0)), _num(ingest.get("rows_accepted", 0)),
                 _num(ingest.get("rows_quarantined", 0))))
    out.append(_table(["table", "rows read", "accepted", "quarantined"], rows))
    rules = top_quarantine_rules(ingest, n=10)
    out.append("<h3>Quarantine</h3>")
    if rules:
        out.append(_table(["rule", "rows quarantined"], [(f"<code>{_e(r)}</code>", _num(n)) for r, n in rules]))
    elif ingest.get("rows_quarantined"):
        out.append(f"<p>{ingest['rows_quarantined']:,} rows quarantined (no rule breakdown recorded).</p>")
    else:
        out.append("<p>Nothing quarantined this run.</p>")
    if basket_account is not None and basket_account.height:
        n = int(basket_account["baskets"][0]) if "baskets" in basket_account.columns else 0
        out.append(f"<h3>Baskets</h3><p>{_e(baskets.describe_account(basket_account, n))} (every line of the "
                   "training window, under the first basket rule that dropped it).</p>")
    out.append("<h3>Published</h3>")
    out.append(_table(["table", "rows", "partition"],
                      [(_e(p["table"]), _num(int(p["rows"])), f"<code>{_e(p['path'])}</code>") for p in published]))
    return "".join(out)


def associations_section(associations: pl.DataFrame, titles: Mapping[str, str], n: int = TOP_PAIRS) -> str:
    top = top_pairs(associations, n)
    rows = [
        (str(i), _product(titles, r[PRODUCT_ID]), _product(titles, r[ASSOCIATED_PRODUCT_ID]), _num(r["score"], 3),
         _e(r["method"]), _e(r["source"]), _num(r["n_rule"]), _num(r["lift"]), _pair_explanation(r))
        for i, r in enumerate(top.iter_rows(named=True), 1)
    ]
    return (f"<h2>Top associations</h2><p>The {len(rows)} strongest rank-1 pairs ({associations.height:,} "
            "associations published); a mutual pair is shown once.</p>"
            + _table(["#", "product", "associated product", "score", "method", "source", "orders together",
                      "lift", "explanation"], rows, "no associations published"))


def bundles_section(bundles: pl.DataFrame | None, n: int = TOP_BUNDLES) -> str:
    if bundles is None:
        return "<h2>Top bundles</h2><p><em>no bundles published this run</em></p>"
    top = _ensure(bundles, BUNDLE_COLUMNS).sort("bundle_rank").head(n)
    rows = [
        (_num(r["bundle_rank"]),
         "<br>".join(f"<code>{_e(p)}</code> {_e(t)}" for p, t in zip(r["products"], r["titles"])),
         _num(r["n_baskets"]), _num(r["lift"]), _e(r["explanation"]))
        for r in top.iter_rows(named=True)
    ]
    return (f"<h2>Top bundles</h2><p>The top {len(rows)} of {bundles.height:,} bundles.</p>"
            + _table(["rank", "products", "orders", "lift", "explanation"], rows, "no bundles published"))


def changes_section(diff: RunDiff | None, as_of: date, titles: Mapping[str, str]) -> str:
    if diff is None:
        return ("<h2>What changed since the previous run</h2><p class=\"first-run\">First run: no committed run "
                f"before {as_of.isoformat()} to compare with.</p>")

    def pairs(frame: pl.DataFrame) -> list[tuple[str, ...]]:
        return [(_product(titles, r[PRODUCT_ID]), _product(titles, r[ASSOCIATED_PRODUCT_ID]), _num(r["rank"]),
                 _num(r["score"], 3)) for r in frame.head(DIFF_ROWS).iter_rows(named=True)]

    shifts = [(_product(titles, r[PRODUCT_ID]), _product(titles, r[ASSOCIATED_PRODUCT_ID]),
               _num(r["previous_rank"]), _num(r["rank"]), f"{r['shift']:+d}")
              for r in diff.shifts.head(DIFF_ROWS).iter_rows(named=True)]
    return "".join([
        "<h2>What changed since the previous run</h2>",
        f"<p class=\"changes\">Compared with the run of {diff.previous.isoformat()}, in each product's top "
        f"{diff.k}: {diff.new.height:,} pairs new, {diff.dropped.height:,} dropped, {diff.shifts.height:,} moved "
        f"rank, {diff.unchanged:,} unchanged.</p>",
        f"<h3>New pairs (strongest {min(DIFF_ROWS, diff.new.height)})</h3>",
        _table(["product", "associated product", "rank", "score"], pairs(diff.new)),
        f"<h3>Dropped pairs (strongest {min(DIFF_ROWS, diff.dropped.height)}, as ranked in the previous run)</h3>",
        _table(["product", "associated product", "previous rank", "previous score"], pairs(diff.dropped)),
        f"<h3>Biggest rank shifts ({min(DIFF_ROWS, diff.shifts.height)})</h3>",
        _table(["product", "associated product", "previous rank", "rank", "shift"], shifts),
    ])


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f3f3f3;text-align:left}code{font-size:90%}small{color:#666}svg{border:1px solid #eee}"""


def render(
    as_of: date,
    served: Mapping,
    ingest: Mapping,
    published: Sequence[Mapping],
    associations: pl.DataFrame,
    bundles: pl.DataFrame | None,
    titles: Mapping[str, str],
    previous: tuple[date, pl.DataFrame] | None = None,
    basket_account: pl.DataFrame | None = None,
) -> str:
    """The run's report as one HTML page.

    ``served``: the serving plan summary (``pipeline.served_summary``); ``ingest``: the flow's
    ingestion report; ``published``: {table, rows, path} per partition; ``associations`` and
    ``bundles``: this run's product_associations and bundles partitions; ``titles``: product_id ->
    title; ``previous``: (date, product_associations) of the previous committed run, None when
    this is the first.
    """
    diff = diff_runs(associations, previous[1], previous[0]) if previous is not None else None
    day = as_of.isoformat()
    body = "".join([
        f"<h1>prodassoc nightly run, as_of {_e(day)}</h1>",
        served_section(served),
        counts_section(ingest, published, basket_account),
        associations_section(associations, titles),
        bundles_section(bundles),
        f"<h2>Association network of the top {len(network_products(associations))} products</h2>",
        "<p>Products of the strongest rank-1 pairs on a circle; a line joins two of them when one is among "
        "the other's published associations, thicker for a higher score. Hover for full titles.</p>",
        network_svg(associations, titles),
        changes_section(diff, as_of, titles),
    ])
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>prodassoc nightly {_e(day)}'
            f"</title>\n<style>{_STYLE}</style>\n</head><body>{body}</body></html>\n")
