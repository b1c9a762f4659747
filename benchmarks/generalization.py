"""Does the tuned model learn relevance or the training documents? Two measurements, one command each, resumable.

    python benchmarks/generalization.py folds  [--datasets scifact,nfcorpus] [--k 3]
    python benchmarks/generalization.py select [--configs benchmarks/generalization_configs.yaml] [--seeds 13,14,15]
    python benchmarks/generalization.py readme   # only rewrite README's block from the committed JSON

``folds`` (results/generalization.json): document-disjoint folds (hardneg.generalization.document_folds) of every
labelled query of each collection; per fold, the configuration of params.yaml (what ``make run`` ships) is mined,
trained (seed 13 + fold) and evaluated on the fold's test queries, none of whose relevant documents was ever
trained on; beside it the no-training first stage and the untuned model, on the same candidates.

``select`` (results/generalization_select.json): the candidate configurations (overrides of params.yaml) on the
bundled collection's own splits, every seed; the selection rule of hardneg.generalization.select is applied to the
seed-averaged dev numbers. Test numbers are recorded, but the choice reads dev only.

Datasets: ``scifact`` = params data.dir (the bundled SciFact), ``nfcorpus`` = ../shared/data/nfcorpus (or
``--nfcorpus DIR``). Embeddings come from ``hardneg embed``'s cache; each collection's are computed once.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

from _offline import ROOT  # offline, quiet, this checkout importable

RESULTS = ROOT / "benchmarks" / "results"
SYSTEMS = ("served", "no_training", "tuned_alone", "untuned_alone", "untuned_served")


def _prepare(name: str, data_dir: Path, params: dict, work: Path):
    """The collection loaded as the stages load it (no dev carve yet) and its reduced vectors (embed + reduce)."""
    from hardneg.data import load_dataset
    from hardneg.settings import settings
    from hardneg.stages import embed_stage, reduce_stage

    s = settings(params)
    ds = load_dataset(
        data_dir, empty_documents=s.validate.empty_documents, empty_queries=s.validate.empty_queries
    )
    emb, red = work / name / "embeddings", work / name / "reduced"
    if not (red / "lineage.json").exists():
        t0 = time.perf_counter()
        embed_stage(data_dir, s, None, emb)
        reduce_stage([emb], s, red)
        logging.info("%s: embedded and reduced in %.0f s", name, time.perf_counter() - t0)
    return ds, red


def _mean(rows: list[dict], split: str, system: str, part: str, metric: str) -> float | None:
    vals = [r[split][system][part].get(metric) for r in rows if system in r.get(split, {})]
    vals = [v for v in vals if v is not None]
    return round(sum(vals) / len(vals), 5) if vals else None


def _paired(rows: list[dict], a: str, b: str) -> dict:
    from hardneg.evaluate import paired_test

    pa, pb = {}, {}
    for r in rows:
        for q, v in r["per_query"][a].items():
            pa[f"{r['fold']}:{q}"] = v
        for q, v in r["per_query"][b].items():
            pb[f"{r['fold']}:{q}"] = v
    t = paired_test(pa, pb)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in t.items()}


def folds(args, params: dict) -> dict:
    from hardneg.experiment import run_configuration
    from hardneg.generalization import document_folds, fold_dataset, pooled_qrels
    from hardneg.settings import settings

    out_path = RESULTS / "generalization.json"
    state = json.loads(out_path.read_text()) if out_path.exists() and not args.fresh else {}
    key = _key(params, args)
    if state.get("key") != key:
        state = {"key": key, "datasets": {}}
    d = settings(params).data
    for name in (args.datasets or "scifact,nfcorpus").split(","):
        data_dir = ROOT / params["data"]["dir"] if name == "scifact" else Path(args.nfcorpus)
        ds, red = _prepare(name, data_dir, params, Path(args.work))
        all_qrels = pooled_qrels(ds)
        fl = document_folds(all_qrels, args.k, seed=args.seed, max_test_fraction=args.max_test_fraction)
        entry = state["datasets"].setdefault(name, {"folds": []})
        done = {f["fold"] for f in entry["folds"]}
        for fold in fl:
            if fold.index in done:
                continue
            fds = fold_dataset(ds, fold, d.train_split, d.test_split)
            p = copy.deepcopy(params)
            p["train"]["seed"] = int(params["train"]["seed"]) + fold.index
            t0 = time.perf_counter()
            res = run_configuration(
                fds,
                red,
                p,
                Path(args.work) / name / f"fold{fold.index}",
                held_out=fold.held_out,
                ignore=fold.ignore,
            )
            res.update(fold.record(), seed=p["train"]["seed"])
            entry["folds"].append(res)
            entry["folds"].sort(key=lambda f: f["fold"])
            _summarise(entry)
            _write(out_path, state)
            logging.info(
                "%s fold %d: served %.4f vs no-training %.4f (tuned alone %.4f, untuned %.4f) in %.0f s",
                name,
                fold.index,
                res["test"]["served"]["all"]["mrr@10"],
                res["test"]["no_training"]["all"]["mrr@10"],
                res["test"]["tuned_alone"]["all"]["mrr@10"],
                res["test"]["untuned_alone"]["all"]["mrr@10"],
                time.perf_counter() - t0,
            )
        _summarise(entry)
    state.update(commit=_commit(), cpu=_cpu(), protocol=_protocol(args))
    _write(out_path, state)
    return state


def _summarise(entry: dict) -> None:
    rows = entry["folds"]
    entry["mean"] = {s: {m: _mean(rows, "test", s, "all", m) for m in ("mrr@10", "ndcg@10")} for s in SYSTEMS}
    entry["mean"]["n_test_queries"] = sum(r["test"]["served"]["all"]["n"] for r in rows)
    entry["paired"] = {
        "served_vs_no_training": _paired(rows, "served", "no_training"),
        "tuned_alone_vs_untuned_alone": _paired(rows, "tuned_alone", "untuned_alone"),
    }


def _key(params: dict, args, fixed_depth: bool = False) -> dict:
    from hardneg.config import params_hash

    p = copy.deepcopy(params)
    if (
        fixed_depth
    ):  # select compares training configurations at retrieve.rerank_depth (rerank_depths not read)
        p["evaluate"].pop("rerank_depths", None)
    p.get("evaluate", {}).pop("gate_cv_folds", None)  # a report (off here, see main): changes no number
    return {
        "params": params_hash(p, ["data", "embed", "reduce", "mine", "retrieve", "train", "evaluate"]),
        "k": args.k,
        "seed": args.seed,
        "max_test_fraction": args.max_test_fraction,
    }


def _protocol(args) -> str:
    from hardneg.study_report import FOLDS_SYSTEMS

    return (
        f"{args.k} document-disjoint folds (seed {args.seed}): held-out positive documents H = one fold of all "
        "positive documents; test = queries with a positive in H (at most "
        f"{args.max_test_fraction:g} of all queries), judged on their H positives, their other positives left out "
        "of the candidates; train = every other query with its H positives removed; H is never mined as a negative. "
        "Dev carved from the fold's train queries as for any collection without one. " + FOLDS_SYSTEMS
    )


def _commit() -> str:
    """HEAD of this checkout, ``-dirty`` when anything but the benchmarks' own outputs changed
    (``hardneg.lineage.BENCHMARK_OUTPUTS``: this benchmark rewrites its results and README's block while it runs)."""
    from hardneg.lineage import BENCHMARK_OUTPUTS, git_commit

    return git_commit(ROOT, ignore=BENCHMARK_OUTPUTS)


def _cpu() -> dict:
    from hardneg.hw import cpu_info

    return cpu_info()


def _write(path: Path, obj: dict) -> None:
    from hardneg.artifacts import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, sort_keys=True)


def select(args, params: dict) -> dict:
    import yaml

    from hardneg.experiment import run_configuration
    from hardneg.generalization import select as rule
    from hardneg.settings import merge_params

    configs = yaml.safe_load(Path(args.configs).read_text(encoding="utf-8"))["configs"]
    name_ds = args.datasets or "scifact"
    if name_ds not in ("scifact", "nfcorpus"):
        raise SystemExit(f"select: --datasets must be scifact or nfcorpus, got {name_ds!r}")
    suffix = "" if name_ds == "scifact" else f"_{name_ds}"
    out_path = RESULTS / f"generalization_select{suffix}.json"
    state = json.loads(out_path.read_text()) if out_path.exists() and not args.fresh else {}
    key = _key(params, args, fixed_depth=True)
    if state.get("key") != key:
        state = {"key": key, "configs": {}}
    for gone in set(state["configs"]) - set(configs):  # removed from the candidates file: no longer compete
        state["configs"].pop(gone)
    for c in state[
        "configs"
    ].values():  # runs finished before per-run commits were recorded: the state's stamp
        for run in c["seeds"].values():
            if "commit" not in run:
                run.update(commit=state.get("commit"), commit_backfilled=True)
    data_dir = ROOT / params["data"]["dir"] if name_ds == "scifact" else Path(args.nfcorpus)
    ds, red = _prepare(name_ds, data_dir, params, Path(args.work))
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for name, override in configs.items():
            override = dict(override or {})
            only = override.pop("screened_on_seeds", None)  # screened out: measured on these seeds only
            reference = override.pop("reference", False)  # measured for the rule, never a candidate
            if (
                state["configs"].get(name, {}).get("override", override) != override
            ):  # edited since: measure again
                state["configs"].pop(name, None)
            runs = state["configs"].setdefault(name, {"override": override, "seeds": {}})["seeds"]
            for flag, value in (("screened_on_seeds", only), ("reference", reference or None)):
                if value is None:
                    state["configs"][name].pop(flag, None)
                else:
                    state["configs"][name][flag] = value
            if str(seed) in runs or (only is not None and seed not in only):
                continue
            p = merge_params(params, override)
            p["train"]["seed"] = seed
            # training configurations are compared at one rerank depth; the evaluate stage chooses it on dev later
            p["evaluate"]["rerank_depths"] = [int(p["retrieve"]["rerank_depth"])]
            res = run_configuration(ds, red, p, Path(args.work) / f"select{suffix}" / name, untuned=False)
            res.pop("per_query", None)
            res["commit"] = _commit()
            runs[str(seed)] = res
            _write(out_path, state)
            logging.info(
                "%s seed %d: dev served %.4f (unseen %.4f), test served %.4f (seen %.4f unseen %.4f) in %.0f s",
                name,
                seed,
                res["dev"]["served"]["all"]["mrr@10"],
                res["dev"]["served"]["unseen"].get("mrr@10", float("nan")),
                res["test"]["served"]["all"]["mrr@10"],
                res["test"]["served"]["seen"].get("mrr@10", float("nan")),
                res["test"]["served"]["unseen"].get("mrr@10", float("nan")),
                res["seconds"],
            )
    means = {}
    for name, c in state["configs"].items():
        rows = list(c["seeds"].values())
        means[name] = {
            split: {
                s: {
                    part: {"mrr@10": _mean(rows, split, s, part, "mrr@10"), "n": rows[0][split][s][part]["n"]}
                    for part in ("all", "seen", "unseen")
                }
                for s in ("served", "tuned_alone", "no_training")
            }
            for split in ("dev", "test")
        }
        c["mean"] = means[name]
    # the rule chooses among the configurations measured on every seed (screened-out and reference ones are
    # reported only); the untuned reference (0 steps: the base model) gives the model guard its baseline
    full = [n for n in means if not {"screened_on_seeds", "reference"} & set(state["configs"][n])]
    dev_served = {n: {"dev": means[n]["dev"]["served"]} for n in full}
    any_m = next(iter(means.values()))
    state["selection"] = rule(
        dev_served,
        any_m["dev"]["no_training"]["unseen"]["mrr@10"],
        model_dev_unseen={n: means[n]["dev"]["tuned_alone"]["unseen"]["mrr@10"] for n in full},
        untuned_dev_unseen=_untuned_dev_unseen(state, means),
    )
    state.update(commit=_commit(), cpu=_cpu(), seeds=seeds, dataset=name_ds)
    _write(out_path, state)
    return state


def _untuned_dev_unseen(state: dict, means: dict) -> float | None:
    """The untuned model alone on the dev-unseen queries: the ``untuned`` reference configuration (0 steps)."""
    ref = [n for n, c in state["configs"].items() if c.get("reference") and n in means]
    return means[ref[0]]["dev"]["tuned_alone"]["unseen"]["mrr@10"] if ref else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "what",
        choices=["folds", "select", "choose", "readme"],
        help="choose: the rule across the select results of every collection (generalization_choice.json); "
        "readme: only rewrite README's block",
    )
    ap.add_argument(
        "--datasets",
        default=None,
        help="folds: scifact,nfcorpus (default); select: scifact (default) or nfcorpus",
    )
    ap.add_argument("--nfcorpus", default=str(ROOT.parent / "shared" / "data" / "nfcorpus"))
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-test-fraction", type=float, default=0.3)
    ap.add_argument("--configs", default=str(ROOT / "benchmarks" / "generalization_configs.yaml"))
    ap.add_argument("--seeds", default="13,14,15")
    ap.add_argument("--work", default=str(ROOT / "runs" / "generalization"))
    ap.add_argument("--fresh", action="store_true", help="ignore finished results")
    ap.add_argument("--config", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss", "bm25s", "sentence_transformers", "httpx", "transformers", "hardneg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from hardneg.config import load_params

    params = load_params(Path(args.config))
    # the evaluate stage's cross-validated dev report (evaluate.gate_cv_folds) changes no choice and no number
    # measured here, and would add about a minute to each of the benchmark's evaluations: off
    params["evaluate"]["gate_cv_folds"] = 0
    if args.what in ("folds", "select"):
        (folds if args.what == "folds" else select)(args, params)
    if args.what == "choose":
        choose()
    write_readme()
    return 0


def choose() -> dict:
    """The selection rule across collections (hardneg.generalization.select_across) over the finished select runs:
    results/generalization_select.json (SciFact) and results/generalization_select_nfcorpus.json."""
    from hardneg.generalization import select_across

    collections, baselines, seeds, models, untuned = {}, {}, {}, {}, {}
    for name, file in (
        ("scifact", "generalization_select.json"),
        ("nfcorpus", "generalization_select_nfcorpus.json"),
    ):
        st = json.loads((RESULTS / file).read_text(encoding="utf-8"))
        full = {
            n: c
            for n, c in st["configs"].items()
            if not {"screened_on_seeds", "reference"} & set(c) and c.get("mean")
        }
        collections[name] = {n: c["mean"]["dev"]["served"] for n, c in full.items()}
        models[name] = {n: c["mean"]["dev"]["tuned_alone"]["unseen"]["mrr@10"] for n, c in full.items()}
        untuned[name] = _untuned_dev_unseen(
            st, {n: c["mean"] for n, c in st["configs"].items() if c.get("mean")}
        )
        baselines[name] = next(iter(full.values()))["mean"]["dev"]["no_training"]
        seeds[name] = st["seeds"]
        overrides = {n: c["override"] for n, c in full.items()}
    out = select_across(collections, baselines, models=models, untuned=untuned)
    out.update(seeds=seeds, override=overrides[out["chosen"]], commit=_commit())
    _write(RESULTS / "generalization_choice.json", out)
    logging.info("chosen across collections: %s", out["chosen"])
    return out


def write_readme() -> None:
    """README's generalisation block from the committed JSON (tests/test_readme_numbers.py checks it)."""
    from hardneg.study_report import GEN_END, GEN_START, generalization_table, replace_block

    def read(name: str) -> dict | None:
        p = RESULTS / name
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None

    readme = ROOT / "README.md"
    block = generalization_table(
        read("generalization.json"),
        read("generalization_select.json"),
        read("generalization_select_nfcorpus.json"),
        read("generalization_choice.json"),
    )
    readme.write_text(replace_block(readme.read_text(encoding="utf-8"), block, GEN_START, GEN_END), "utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
