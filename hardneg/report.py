"""HTML report of a strategy comparison: one self-contained file (matplotlib PNGs embedded as base64).

Plots: served MRR@10 per strategy with error bars over seeds (and the references); distance distributions of the
mined negatives vs the positives (``d(Q,P)`` vs ``d(Q,N)`` in the shared PCA space) per strategy; the PCA
explained-variance curve from ``reduce.json`` when available. Tables: the results and the paired tests.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_mrr_bars(summary: Mapping[str, Any], best: str) -> str:
    plt = _mpl()
    names, means, stds, colors = [], [], [], []
    for row in summary["table"]:
        cell = row.get("fusion/mrr@10") or row.get("first_stage/mrr@10")
        if not cell:
            continue
        names.append(row["strategy"])
        means.append(cell["mean"])
        stds.append(cell.get("std", 0.0))
        colors.append(
            "#d62728" if row["strategy"] == best else ("#7f7f7f" if row["kind"] == "reference" else "#1f77b4")
        )
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, color=colors, capsize=4)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("MRR@10 (test, served = fusion)")
    lo = min(means) if means else 0.0
    ax.set_ylim(max(0.0, lo - 0.1), min(1.0, max(means) + 0.05) if means else 1.0)
    for xi, m in zip(x, means, strict=True):
        ax.text(xi, m + 0.003, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("Served MRR@10 per negative strategy (mean ± std over seeds; grey: references)")
    return _png(fig)


def plot_distances(negatives: Mapping[str, list[dict[str, Any]]]) -> str | None:
    items = [(s, rows) for s, rows in negatives.items() if rows]
    if not items:
        return None
    plt = _mpl()
    n = len(items)
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    bins = np.linspace(0.0, 1.2, 49)
    for ax, (s, rows) in zip(axes.flat, items, strict=False):
        d_qp = [r["d_qp"] for r in rows if "d_qp" in r]
        d_qn = [d for r in rows for d in r.get("d_qn", [])]
        ax.hist(d_qp, bins=bins, alpha=0.6, density=True, label=f"d(Q,P) n={len(d_qp)}", color="#2ca02c")
        if d_qn:
            ax.hist(d_qn, bins=bins, alpha=0.6, density=True, label=f"d(Q,N) n={len(d_qn)}", color="#d62728")
        ax.set_title(s)
        ax.set_xlabel("cosine distance (PCA space)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Mined negatives vs positives: distance to the query")
    fig.tight_layout()
    return _png(fig)


def plot_pca(reduce_stats: Mapping[str, Any] | None) -> str | None:
    if not reduce_stats or not reduce_stats.get("cumulative_explained_variance"):
        return None
    plt = _mpl()
    cum = np.asarray(reduce_stats["cumulative_explained_variance"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(cum) + 1), cum, color="#1f77b4")
    k = reduce_stats.get("n_components")
    if k:
        ax.axvline(
            k,
            color="#d62728",
            ls="--",
            label=f"kept {k} dims ({reduce_stats.get('explained_variance_kept', 0):.3f})",
        )
        ax.legend()
    ax.set_xlabel("components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_title(f"PCA over the concatenated embeddings ({reduce_stats.get('input_dim', '?')} dims in)")
    return _png(fig)


def _table_html(summary: Mapping[str, Any], best: str) -> str:
    tests = summary["paired_tests"]["vs"]
    head = [
        "strategy",
        "seeds",
        "served MRR@10",
        "MRR@3",
        "nDCG@10",
        "R@100",
        "reranker alone MRR@10",
        "diff best - row",
        "p (t-test)",
        "p (randomization)",
    ]
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]

    def fmt(c: Any) -> str:
        if not c:
            return "—"
        return f"{c['mean']:.4f} ± {c['std']:.4f}" if c.get("std") else f"{c['mean']:.4f}"

    for row in summary["table"]:
        pre = "fusion" if "fusion/mrr@10" in row else "first_stage"
        t = tests.get(row["strategy"])
        cells = [
            html.escape(row["strategy"]) + (" <b>(hardneg best)</b>" if row["strategy"] == best else ""),
            str(row.get("n_seeds", 0)),
            fmt(row.get(f"{pre}/mrr@10")),
            fmt(row.get(f"{pre}/mrr@3")),
            fmt(row.get(f"{pre}/ndcg@10")),
            fmt(row.get(f"{pre}/recall@100")),
            fmt(row.get("rerank/mrr@10")),
            f"{t['diff']:+.4f}" if t else "",
            f"{t['p_ttest']:.3g}" if t else "",
            f"{t['p_randomization']:.3g}" if t else "",
        ]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_report(out_dir: str | Path, results: Mapping[str, Any], summary: Mapping[str, Any]) -> Path:
    """Write ``report.html`` into ``out_dir`` (negatives read from ``out_dir/negatives/<strategy>/``)."""
    out = Path(out_dir)
    cfg = results.get("config", {})
    best = cfg.get("best", "hybrid")
    negatives: dict[str, list[dict[str, Any]]] = {}
    for s in cfg.get("strategies", []):
        f = out / "negatives" / s / "negatives.jsonl"
        if f.exists():
            negatives[s] = [
                json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
    imgs = [
        ("Served MRR@10 per strategy", plot_mrr_bars(summary, best)),
        ("Distance distributions", plot_distances(negatives)),
        ("PCA explained variance", plot_pca(results.get("reduce"))),
    ]
    neg_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{v.get('pairs')}</td><td>{v.get('negatives_per_pair')}</td><td>{v.get('pairs_without_negative')}</td><td>{v.get('seconds')}</td></tr>"
        for s, v in results.get("negatives", {}).items()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>hardneg strategy comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}</style></head><body>",
        f"<h1>Negative-strategy comparison: {html.escape(str(results.get('dataset', '')))}</h1>",
        f"<p>Configuration: <code>{html.escape(json.dumps(cfg))}</code></p>",
        "<h2>Results (test split)</h2>",
        _table_html(summary, best),
        f"<p>Paired tests: per-query {html.escape(summary['paired_tests']['metric'])} of <b>{html.escape(best)}</b> (averaged over seeds) vs each row.</p>",
        "<h2>Negatives per strategy</h2><table><tr><th>strategy</th><th>pairs</th><th>negatives / pair</th><th>pairs without negative</th><th>seconds</th></tr>",
        neg_rows,
        "</table>",
    ]
    for title, img in imgs:
        if img:
            parts.append(
                f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{img}'>"
            )
    parts.append(f"<p>Total time: {results.get('seconds_total', '?')} s.</p></body></html>")
    p = out / "report.html"
    p.write_text("\n".join(parts), encoding="utf-8")
    return p
