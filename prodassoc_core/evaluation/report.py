"""The evaluation report: a Markdown table and a self-contained HTML page with a plot.

Input is the results frame of the harness, one row per method, with columns
``method``, the metric columns named in ``COLUMNS`` and the counts named in ``COUNTS``.
The table's first row says how many products (or, for basket completion, test baskets)
each column scores; methods that were not evaluated are listed with the reason. The plot
(NDCG@k per method, all / warm / cold) is embedded in the HTML as a base64 PNG, so the page
is one file.
"""

from __future__ import annotations

import base64
import html
import io
import math

import polars as pl

# (column, header) in table order
COLUMNS = [
    ("ndcg_all", "NDCG@10 all"),
    ("ndcg_warm", "warm"),
    ("ndcg_cold", "cold"),
    ("hr_all", "HR@10 all"),
    ("recall_all", "Recall@10 all"),
    ("bc_hr", "completion HR@10"),
    ("bc_ndcg", "completion NDCG@10"),
]

# metric column -> the results column counting what it scores (products; test baskets for completion)
COUNTS = {
    "ndcg_all": "n_all", "ndcg_warm": "n_warm", "ndcg_cold": "n_cold", "hr_all": "n_all", "recall_all": "n_all",
    "bc_hr": "bc_n", "bc_ndcg": "bc_n",
}
COUNT_LABEL = "n scored"
COUNT_NOTE = (f"{COUNT_LABEL}: products scored per column (test baskets for basket completion); "
              "a method whose value is – did not score that column")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def scored_counts(results: pl.DataFrame) -> list[str]:
    """Per metric column of ``COLUMNS``: how many products (baskets) it scores, over the methods
    that computed it; a range where methods differ, – where none did."""
    out = []
    for column, _ in COLUMNS:
        count = COUNTS.get(column)
        if count is None or count not in results.columns or column not in results.columns:
            out.append("–")
            continue
        ns = sorted({int(n) for v, n in zip(results[column].to_list(), results[count].to_list())
                     if not _is_missing(v) and n is not None})
        out.append("–" if not ns else f"{ns[0]:,}" if len(ns) == 1 else f"{ns[0]:,}–{ns[-1]:,}")
    return out


def _fmt(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else f"{value:,}"


def markdown_table(results: pl.DataFrame) -> str:
    """One row per method, metrics to three decimals."""
    headers = ["method", *(h for _, h in COLUMNS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.append("| " + " | ".join([f"*{COUNT_LABEL}*", *scored_counts(results)]) + " |")
    for row in results.iter_rows(named=True):
        cells = [row["method"], *(_fmt(row.get(c)) for c, _ in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ndcg_plot_png(results: pl.DataFrame) -> bytes:
    """Grouped bars: NDCG@10 for all, warm and cold products, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["method"].to_list()
    groups = [("ndcg_all", "all"), ("ndcg_warm", "warm"), ("ndcg_cold", "cold")]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(methods)), 3.8), dpi=110)
    for i, (column, label) in enumerate(groups):
        values = [v if v is not None else float("nan") for v in results[column].to_list()]
        ax.bar([m + (i - 1) * width for m in range(len(methods))], values, width, label=label)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_ylim(0, 1)
    ax.set_title("Product associations vs. the test window")
    ax.legend(ncols=3, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render(
    results: pl.DataFrame, context: dict[str, str | int | float], skipped: dict[str, str] | None = None
) -> tuple[str, str]:
    """(markdown, html) of the evaluation report; ``context`` lists the run's facts (split, counts),
    ``skipped`` the methods that were not evaluated and why."""
    skipped = skipped or {}
    facts = "\n".join(f"- {k}: {v}" for k, v in context.items())
    table = markdown_table(results)
    not_run = "".join(f"\n- {m}: {why}" for m, why in skipped.items())
    md = f"# prodassoc evaluation\n\n{facts}\n\n{table}\n\n{COUNT_NOTE}.\n"
    if skipped:
        md += f"\n## Not evaluated\n{not_run}\n"
    img = ""
    if results.height:
        png = base64.b64encode(ndcg_plot_png(results)).decode()
        img = f'<p><img alt="NDCG@10 per method, all, warm and cold products" src="data:image/png;base64,{png}"></p>'
    counts = "".join(f"<td>{html.escape(c)}</td>" for c in [COUNT_LABEL, *scored_counts(results)])
    skipped_html = "".join(f"<li>{html.escape(m)}: {html.escape(why)}</li>" for m, why in skipped.items())
    skipped_html = f"<h2>Not evaluated</h2><ul>{skipped_html}</ul>" if skipped else ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [r["method"], *(_fmt(r.get(k)) for k, _ in COLUMNS)]) + "</tr>"
        for r in results.iter_rows(named=True)
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", *(h for _, h in COLUMNS)])
    facts_html = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in context.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>prodassoc evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
tr.counts td{{font-style:italic;color:#555}}</style>
</head><body><h1>prodassoc evaluation</h1><ul>{facts_html}</ul>
<table><thead><tr>{head}</tr><tr class="counts">{counts}</tr></thead><tbody>{rows}</tbody></table>
<p><small>{html.escape(COUNT_NOTE)}.</small></p>
{skipped_html}
{img}
</body></html>
"""
    return md, page
