"""The quality study's summary: seed means, the best mined policy on dev, paired randomization p-values
(``quality.json``), the HTML report and README's quality table (hardneg.quality runs the study)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hardneg.errors import HardnegError

log = logging.getLogger(__name__)

NOT_MINED = ("untuned", "in-batch", "random")  # T3 compares the best *mined* policy against these


# ----------------------------------------------------------------------------------------------- significance


def randomization_p(a: Mapping[str, float], b: Mapping[str, float], n: int = 10000, seed: int = 0) -> float:
    from hardneg.evaluate import paired_test

    return float(paired_test(a, b, n_resamples=n, seed=seed)["p_randomization"])


def seed_mean(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    qs = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    return {q: float(np.mean([p[q] for p in per_seed])) for q in qs}


def summarize(results: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """quality.json from the finished arm runs: means over seeds, the best mined policy on dev, p-values."""
    arms_out: dict[str, Any] = {}
    finished = {a: r for a, r in results["arms"].items() if r}
    for arm, by_seed in finished.items():
        seeds = sorted(by_seed, key=int)
        row: dict[str, Any] = {"seeds": [int(s) for s in seeds], "steps": by_seed[seeds[0]].get("steps")}
        for system in ("alone", "rerank", "served"):
            if system not in by_seed[seeds[0]]:  # runs from before the rerank system was recorded
                continue
            for split in ("dev", "test", "dev_seen", "dev_unseen", "test_seen", "test_unseen"):
                if split not in by_seed[seeds[0]][system]:
                    continue
                for m in ("mrr@10", "ndcg@10", "mrr@3"):
                    if m not in by_seed[seeds[0]][system][split]:
                        continue
                    vals = [by_seed[s][system][split][m] for s in seeds]
                    row.setdefault(system, {}).setdefault(split, {})[m] = {
                        "mean": round(float(np.mean(vals)), 5),
                        "std": round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 5),
                        "seeds": vals,
                    }
                if "n" in by_seed[seeds[0]][system][split]:
                    row.setdefault(system, {}).setdefault(split, {})["n"] = by_seed[seeds[0]][system][split][
                        "n"
                    ]
        row["test"] = row["served"]["test"]
        row["dev"] = row["served"]["dev"]
        row["negatives"] = by_seed[seeds[0]].get("negatives", {})
        row["commits"] = sorted({str(by_seed[s]["commit"]) for s in seeds if by_seed[s].get("commit")})
        arms_out[arm] = row
    candidates = [a for a in arms_out if a not in NOT_MINED]
    best = max(candidates or list(arms_out), key=lambda a: arms_out[a]["served"]["dev"]["mrr@10"]["mean"])
    pq = results["per_query"]
    for arm, row in arms_out.items():
        if arm == best:
            row["p_vs_best"] = None
            continue
        shared = sorted(set(pq[arm]) & set(pq[best]), key=int)
        for system in ("served", "alone"):
            a = seed_mean([pq[best][s][system]["test"] for s in shared])
            b = seed_mean([pq[arm][s][system]["test"] for s in shared])
            per_seed = [
                randomization_p(pq[best][s][system]["test"], pq[arm][s][system]["test"]) for s in shared
            ]
            key = "p_vs_best" if system == "served" else "p_vs_best_alone"
            row[key] = round(randomization_p(a, b), 5)
            row[key + "_per_seed"] = [round(p, 5) for p in per_seed]
            row[("diff_vs_best" if system == "served" else "diff_vs_best_alone")] = round(
                float(np.mean([a[q] - b[q] for q in a])), 5
            )
    return {"arms": arms_out, "best_policy": best}


def report_html(q: Mapping[str, Any]) -> str:
    """A self-contained HTML page: baselines, arms (mean ± std over seeds, per seed), p-values."""
    import html

    def cell(v: Any) -> str:
        return html.escape(f"{v:.4f}" if isinstance(v, float) else str(v))

    def part(row: Mapping[str, Any], split: str) -> str:
        v = (row.get(split) or {}).get("mrr@10")
        v = v["mean"] if isinstance(v, dict) else v
        n = (row.get(split) or {}).get("n")
        return "-" if v is None else f"{cell(v)} (n={n})" if n is not None else cell(v)

    rows = []
    for name, b in q["no_training"].items():
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{cell(b['dev']['mrr@10'])}</td>"
            f"<td>{cell(b['test']['mrr@10'])}</td><td>{part(b, 'test_seen')}</td><td>{part(b, 'test_unseen')}</td>"
            f"<td>{cell(b['test']['ndcg@10'])}</td><td>{cell(b.get('weight'))}</td></tr>"
        )
    arms = []
    for name, a in sorted(q["arms"].items(), key=lambda kv: -kv[1]["served"]["dev"]["mrr@10"]["mean"]):
        s, al = a["served"], a["alone"]
        bold = " style='font-weight:bold'" if name == q["best_policy"] else ""
        arms.append(
            f"<tr{bold}><td>{html.escape(name)}</td>"
            f"<td>{cell(s['dev']['mrr@10']['mean'])}</td>"
            f"<td>{cell(s['test']['mrr@10']['mean'])} ± {cell(s['test']['mrr@10']['std'])}</td>"
            f"<td>{', '.join(cell(x) for x in s['test']['mrr@10']['seeds'])}</td>"
            f"<td>{part(s, 'test_seen')}</td><td>{part(s, 'test_unseen')}</td>"
            f"<td>{cell(al['test']['mrr@10']['mean'])} ± {cell(al['test']['mrr@10']['std'])}</td>"
            f"<td>{cell(s['test']['ndcg@10']['mean'])}</td><td>{cell(a.get('diff_vs_best'))}</td>"
            f"<td>{cell(a.get('p_vs_best'))}</td><td>{cell(a.get('p_vs_best_per_seed'))}</td><td>{cell(a['steps'])}</td></tr>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>hardneg quality study</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        "td{text-align:right}td:first-child{text-align:left}</style>"
        f"<h1>hardneg quality study</h1><p>dataset {html.escape(q['dataset'])}, commit {html.escape(q['commit'])}, "
        f"params {html.escape(q['params_hash'])}; dev = {q['splits']['top_up']['dev_queries']} queries "
        f"(topped up from train: {q['splits']['top_up']['moved']}, seed {q['splits']['top_up']['seed']}). Choices on dev, test read once.</p>"
        f"<p>Best no-training system (dev): <b>{html.escape(q['no_training_hybrid']['system'])}</b>; "
        f"best mined policy (dev): <b>{html.escape(q['best_policy'])}</b>.</p>"
        "<h2>No-training systems (MRR@10)</h2><table><tr><th>system</th><th>dev</th><th>test</th><th>test seen</th>"
        "<th>test unseen</th><th>test nDCG@10</th>"
        "<th>BM25 weight</th></tr>" + "".join(rows) + "</table>"
        "<h2>Arms (bi-encoder fine-tuned, equal steps; served = fused with the first stage)</h2>"
        "<p>Seen: a relevant document of the test query was a training positive; unseen: none was.</p>"
        "<table><tr><th>arm</th><th>dev MRR@10</th><th>test MRR@10 (mean ± sd)</th><th>per seed</th>"
        "<th>test seen</th><th>test unseen</th>"
        "<th>alone test MRR@10</th><th>test nDCG@10</th><th>diff vs best</th><th>p vs best (seed-averaged, "
        "randomization)</th><th>p per seed</th><th>steps</th></tr>" + "".join(arms) + "</table>"
    )


# ------------------------------------------------------------------------------------------------ README table

README_START = (
    "<!-- quality:start (written by benchmarks/quality.py from benchmarks/results/quality.json) -->"
)
README_END = "<!-- quality:end -->"


def readme_table(q: Mapping[str, Any]) -> str:
    """The README's quality block, generated from quality.json (a test checks README against it)."""

    def f(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    def part(row: Mapping[str, Any], split: str) -> str:  # MRR@10 of a test part (a study row or an arm cell)
        cell = row.get(split) or {}
        v = cell.get("mrr@10")
        return f(v["mean"] if isinstance(v, dict) else v) if v is not None else "-"

    best_nt, arms = q["no_training_hybrid"], q["arms"]
    n_seen = (q["served"].get("test_seen") or {}).get("n", "?")
    n_unseen = (q["served"].get("test_unseen") or {}).get("n", "?")
    commits = sorted({c for a in arms.values() for c in a.get("commits", [])})
    lines = [
        README_START,
        f"SciFact test MRR@10 / nDCG@10 (dev = {q['splits']['top_up']['dev_queries']} queries: choices; test read once). "
        f"Study written at commit `{q['commit'][:12]}`"
        + (f"; arms trained at {', '.join(f'`{c[:12]}`' for c in commits)}" if commits else "")
        + f", params `{q['params_hash']}`, {len(q['config']['seeds'])} seeds, {q['config']['max_steps']} steps "
        f"per arm. Seen: a relevant document of the test query was a training positive ({n_seen} queries); unseen: "
        f"none was ({n_unseen}).",
        "",
        "| system | MRR@10 all | seen | unseen | nDCG@10 |",
        "|---|---|---|---|---|",
        f"| BM25 | {f(q['bm25']['test']['mrr@10'])} | {part(q['bm25'], 'test_seen')} | "
        f"{part(q['bm25'], 'test_unseen')} | {f(q['bm25']['test']['ndcg@10'])} |",
        f"| dense ensemble (PCA) | {f(q['dense']['test']['mrr@10'])} | {part(q['dense'], 'test_seen')} | "
        f"{part(q['dense'], 'test_unseen')} | {f(q['dense']['test']['ndcg@10'])} |",
        f"| best no-training system on dev: `{best_nt['system']}` | {f(best_nt['test']['mrr@10'])} | "
        f"{part(best_nt, 'test_seen')} | {part(best_nt, 'test_unseen')} | {f(best_nt['test']['ndcg@10'])} |",
        f"| tuned model alone, retrieving from the whole corpus (`{q['best_policy']}`, mean of seeds) | "
        f"{f(q['reranker_alone']['test']['mrr@10'])} | {part(q['reranker_alone'], 'test_seen')} | "
        f"{part(q['reranker_alone'], 'test_unseen')} | {f(q['reranker_alone']['test']['ndcg@10'])} |",
    ]
    if "reranker_rerank" in q:
        rr = q["reranker_rerank"]
        lines.append(
            f"| tuned model alone, reordering the first stage's top k (k on dev: {q.get('rerank_depth', '?')}) | "
            f"{f(rr['test']['mrr@10'])} | {part(rr, 'test_seen')} | {part(rr, 'test_unseen')} | "
            f"{f(rr['test']['ndcg@10'])} |"
        )
    lines += [
        f"| served: tuned model fused with `{q['first_stage']['system']}` (`{q['best_policy']}`) | "
        f"{f(q['served']['test']['mrr@10'])} | {part(q['served'], 'test_seen')} | {part(q['served'], 'test_unseen')} | "
        f"{f(q['served']['test']['ndcg@10'])} |",
        "",
        "| arm (served, test) | MRR@10 mean ± sd | seeds | seen | unseen | dev MRR@10 | alone MRR@10 | diff vs best "
        "| p vs best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in sorted(arms.items(), key=lambda kv: -kv[1]["served"]["dev"]["mrr@10"]["mean"]):
        t = a["served"]["test"]["mrr@10"]
        lines.append(
            f"| {'**' + name + '**' if name == q['best_policy'] else name} | {f(t['mean'])} ± {f(t['std'])} | "
            f"{', '.join(f(x) for x in t['seeds'])} | {part(a['served'], 'test_seen')} | "
            f"{part(a['served'], 'test_unseen')} | {f(a['served']['dev']['mrr@10']['mean'])} | "
            f"{f(a['alone']['test']['mrr@10']['mean'])} | {f(a.get('diff_vs_best') or 0.0)} | "
            f"{f(a.get('p_vs_best')) if a.get('p_vs_best') is not None else '-'} |"
        )
    lines.append(README_END)
    return "\n".join(lines)


def replace_readme_block(readme: str, block: str) -> str:
    return replace_block(readme, block, README_START, README_END)


FOLDS_SYSTEMS = (
    "per fold the shipped configuration is mined, trained (seed = train.seed + fold) and evaluated as `make run` "
    "does, dev carved from the fold's train queries. no training = the first stage; served = the tuned model fused "
    "with it (rerank depth, weights and per-query gate chosen on dev, with the gate's guards); tuned / untuned "
    "alone = the tuned / base model reordering the same candidates by itself. p: paired randomization over all "
    "folds' test queries."
)
GEN_START = "<!-- generalization:start (written by benchmarks/generalization.py from benchmarks/results/generalization*.json) -->"
GEN_END = "<!-- generalization:end -->"


def generalization_table(
    folds: Mapping[str, Any] | None,
    select: Mapping[str, Any] | None,
    select_nf: Mapping[str, Any] | None = None,
    choice: Mapping[str, Any] | None = None,
) -> str:
    """README's generalisation block from ``generalization.json`` (document-disjoint folds),
    ``generalization_select*.json`` (the candidate configurations on each collection's dev) and
    ``generalization_choice.json`` (the rule across collections)."""

    def f(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else ("-" if x is None else str(x))

    lines = [GEN_START]
    if choice:
        lines += [
            f"**Shipped training configuration: `{choice['chosen']}`** (`{json_compact(choice['override'])}` over "
            f"params.yaml), chosen on dev across {', '.join(choice['collections'])} (commit "
            f"`{choice['commit'][:12]}`). Rule: {choice['rule']}.",
            "",
            "| configuration | mean dev gain over no training | served dev-unseen gain over no training (guarded "
            "collections) | tuned alone dev-unseen gain over untuned (guarded collections) | passes |",
            "|---|---|---|---|---|",
            *(
                f"| {'**' + n + '**' if n == choice['chosen'] else n} | {row['mean_dev_gain']:+.3f} | "
                f"{_signed(row['mean_dev_unseen_gain'])} | {_signed(row.get('mean_dev_unseen_model_gain'))} | "
                f"{'yes' if row['passes'] else 'no'} |"
                for n, row in choice["table"].items()
            ),
            "",
        ]
    for sel_json, label in ((select, "SciFact"), (select_nf, "NFCorpus")):
        lines += _select_rows(sel_json, label, f)
    if folds:
        lines += [
            f"Document-disjoint folds (commit `{folds['commit'][:12]}`, k = {folds['key']['k']}, seed "
            f"{folds['key']['seed']}, test at most {folds['key']['max_test_fraction']:g} of the queries): "
            f"{FOLDS_SYSTEMS}",
            "",
            "| collection | folds | test queries | no training | served | served - no training (p) | tuned alone | "
            "untuned alone | tuned - untuned (p) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, d in folds["datasets"].items():
            m, pr = d["mean"], d["paired"]
            a, b = pr["served_vs_no_training"], pr["tuned_alone_vs_untuned_alone"]
            lines.append(
                f"| {name} | {len(d['folds'])} | {m['n_test_queries']} | {f(m['no_training']['mrr@10'])} | "
                f"{f(m['served']['mrr@10'])} | {a['diff']:+.3f} ({f(a['p_randomization'])}) | "
                f"{f(m['tuned_alone']['mrr@10'])} | {f(m['untuned_alone']['mrr@10'])} | "
                f"{b['diff']:+.3f} ({f(b['p_randomization'])}) |"
            )
    lines.append(GEN_END)
    return "\n".join(lines)


def _signed(x: Any) -> str:
    return "-" if x is None else format(x, "+.3f")


def json_compact(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(", ", ": "))


def _select_rows(select: Mapping[str, Any] | None, label: str, f: Any) -> list[str]:
    """One collection's candidate configurations: dev (what the rule reads) and test (read once, never chosen on)."""
    if not select:
        return []
    sel = select["selection"]
    untuned = sel.get("untuned_dev_unseen_mrr@10")
    lines = [
        f"{label} dev, mean of seeds {', '.join(map(str, select['seeds']))} (commit `{select['commit'][:12]}`, rerank "
        f"depth fixed for this comparison): no-training dev-unseen MRR@10 {f(sel['baseline_dev_unseen_mrr@10'])}, "
        f"untuned model alone {f(untuned)}; served guard {sel['guard']}, model guard "
        f"{sel.get('model_guard', 'not yet part of the rule')}; this collection alone would choose "
        f"`{sel['chosen']}`.",
        "",
        "| configuration | dev served | dev unseen: served | dev unseen: tuned alone | passes the guards | "
        "test served: all | seen | unseen | test tuned alone: all | unseen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nt = None
    for name, c in select["configs"].items():
        m = c.get("mean")
        if not m:
            continue
        nt = m["test"]["no_training"]
        d, t, a = m["dev"]["served"], m["test"]["served"], m["test"]["tuned_alone"]
        screened = c.get("screened_on_seeds")
        if c.get("reference"):
            passes = "reference (the base model, 0 steps)"
        elif screened:
            passes = "screened out (seed " + ", ".join(map(str, screened)) + ")"
        else:
            passes = "yes" if name in sel["passed"] else "no"
        lines.append(
            f"| {name} | {f(d['all']['mrr@10'])} | {f(d['unseen'].get('mrr@10'))} | "
            f"{f(m['dev']['tuned_alone']['unseen'].get('mrr@10'))} | {passes} | "
            f"{f(t['all']['mrr@10'])} | {f(t['seen'].get('mrr@10'))} | {f(t['unseen'].get('mrr@10'))} | "
            f"{f(a['all']['mrr@10'])} | {f(a['unseen'].get('mrr@10'))} |"
        )
    if nt is not None:
        lines.append(
            f"| no training (first stage) | - | - | - | - | {f(nt['all']['mrr@10'])} | "
            f"{f(nt['seen'].get('mrr@10'))} | {f(nt['unseen'].get('mrr@10'))} | - | - |"
        )
    return [*lines, ""]


def replace_block(readme: str, block: str, start: str, end: str) -> str:
    if start not in readme or end not in readme:
        raise HardnegError(f"README.md has no {start!r} ... {end!r} markers")
    i, j = readme.index(start), readme.index(end) + len(end)
    return readme[:i] + block + readme[j:]
