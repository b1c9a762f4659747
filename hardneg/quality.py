"""The quality study: does the reranker earn its place, and is it because of the mined negatives?

This module runs it (arms x seeds, resumable); :mod:`hardneg.baselines` has the no-training systems and
:mod:`hardneg.study_report` the summary, significance, HTML report and README table.

One command (``benchmarks/quality.py`` / ``hardneg compare``), resumable, writes ``quality.json`` (the report contract),
``quality_per_query.json`` and ``quality_report.html``. Protocol (also in README "Reranker quality"):

1. Splits: dev is topped up from train to ``data.dev_min_queries`` (seeded, :func:`hardneg.data.top_up_dev_split`); every choice below
   is made on dev; test is read once per configuration, at the end.
2. No-training systems: BM25, each embedding model alone, the PCA ensemble, and BM25 fused with each dense system
   (weight chosen on dev). The ensemble weights are chosen on dev too (:func:`choose_ensemble_weights`). The best of
   all of them on dev is ``no_training_hybrid``: the baseline the served system must beat.
3. Arms: the bi-encoder fine-tuned for the same number of steps with the same batch, differing only in the negatives:
   ``in-batch`` (none mined), ``random``, ``bm25``, ``st-default`` (sentence-transformers ``mine_hard_negatives``
   defaults), ``positive-aware`` (NV-Retriever TopK-PercPos 95%), ``paper`` (arXiv 2505.18366 on the PCA ensemble,
   primary negative; queries without a qualifying negative still train on in-batch negatives), ``paper-drop`` (the
   paper's triplet setup: those queries are dropped), ``hybrid``; ablations of the paper's rule on other vectors:
   ``paper-single-model`` (the best single model on dev), ``paper-pca80``, ``paper-no-pca``. ``untuned`` is the
   base model without training (0 steps). Each arm runs every seed.
4. **Each arm is a params override of the pipeline's own stages** (:data:`ARM_OVERRIDES` + :func:`arm_params`):
   ``hardneg.stages`` embed (from the embedding cache) -> reduce -> mine -> train -> evaluate, the functions the CLI,
   KFP and ``dvc.yaml`` call, with one retrieve stage (the served first stage and the split record) shared by every
   arm. So the study's served system is exactly what ``make run`` would serve with that arm's params: the evaluate
   stage chooses the rerank depth, the fusion weights and the per-query gate on dev, and also reports the tuned model
   ``alone`` (its query tower retrieving from the whole corpus). Per arm and seed, on dev and test, all / seen /
   unseen. Significance: per-seed paired randomization tests and one over queries of the seed-averaged values.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.artifacts import read_json
from hardneg.baselines import (
    choose_ensemble_weights,
    metrics_by_part,
    metrics_of,
    no_training_systems,
)
from hardneg.errors import ConfigError
from hardneg.settings import Settings, settings
from hardneg.study_report import report_html, summarize

log = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"
PER_QUERY_JSON = "quality_per_query.json"
REPORT_HTML = "quality_report.html"
ARMS = (
    "untuned",
    "in-batch",
    "random",
    "bm25",
    "st-default",
    "positive-aware",
    "paper",
    "paper-drop",
    "hybrid",
    "paper-single-model",
    "paper-pca80",
    "paper-no-pca",
)


# ------------------------------------------------------------------------------------------------------- arms

# Each arm is a params override of the pipeline's own stages (embed -> reduce -> mine -> train -> evaluate, the
# functions of hardneg.stages that the CLI, KFP and dvc.yaml call). Every arm also gets the study's common override
# (the dev-chosen ensemble weights, the equal step budget, the seed, no checkpoint choice): see arm_params.
ARM_OVERRIDES: dict[str, dict[str, Any]] = {
    "untuned": {"train": {"max_steps": 0}},  # the base model saved as it is (0 steps)
    "in-batch": {"train": {"bi_encoder": {"negatives_per_query": 0}}},  # no mined negative is ever sampled
    "random": {"mine": {"policy": "random"}},
    "bm25": {"mine": {"policy": "bm25"}},
    "st-default": {"mine": {"policy": "st-default"}},
    "positive-aware": {"mine": {"policy": "positive-aware"}},
    "paper": {"mine": {"policy": "paper"}},
    "paper-drop": {"mine": {"policy": "paper"}, "train": {"bi_encoder": {"drop_without_negative": True}}},
    "hybrid": {"mine": {"policy": "hybrid"}},
    "paper-single-model": {"mine": {"policy": "paper"}},  # + embed.models = the best single model on dev
    "paper-pca80": {"mine": {"policy": "paper"}, "reduce": {"variance": 0.8, "n_components": None}},
    "paper-no-pca": {"mine": {"policy": "paper"}, "reduce": {"variance": None, "n_components": None}},
}
# arms that train on no mined negative: their mining run is shared (any policy; its negatives are never sampled)
MINES_NOTHING = ("untuned", "in-batch")


def arm_params(
    params: Mapping[str, Any],
    arm: str,
    *,
    seed: int,
    max_steps: int,
    num_negatives: int,
    ensemble_weights: Sequence[float],
    single_model: str | None = None,
) -> dict[str, Any]:
    """The params one (arm, seed) runs the stages with: ``params`` + :data:`ARM_OVERRIDES` [arm] + the study's
    common override (embed.models weighted as chosen on dev, ``mine.num_negatives`` = compare.num_negatives, the
    equal step budget ``max_steps`` with ``epochs`` off, the seed, no dev checkpoint choice). ``single_model``: the
    ``embed.models`` name of paper-single-model's one model."""
    from hardneg.settings import merge_params

    if arm not in ARM_OVERRIDES:
        raise ConfigError(f"unknown compare arm {arm!r}; known: {list(ARMS)}")
    models = [dict(m) for m in params["embed"]["models"]]
    if len(models) != len(ensemble_weights):
        raise ConfigError(
            f"{len(ensemble_weights)} ensemble weights for {len(models)} embed.models: embed and study disagree"
        )
    for m, w in zip(models, ensemble_weights, strict=True):
        m["weight"] = float(w)
    if arm == "paper-single-model":
        models = [dict(m, weight=1.0) for m in models if str(m["name"]) == single_model]
        if not models:
            raise ConfigError(f"paper-single-model: {single_model!r} is not one of embed.models")
    common = {
        "embed": {"models": models},
        "mine": {"num_negatives": int(num_negatives)},
        "train": {
            "seed": int(seed),
            "max_steps": int(max_steps),
            "eval_every": 0,
            "bi_encoder": {"epochs": None},
        },
    }
    p = merge_params(merge_params(dict(params), common), ARM_OVERRIDES[arm])
    if arm == "untuned":
        p["train"]["max_steps"] = 0
    return p


def stage_result(eval_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, per-query test MRR@10) of one arm from its evaluate stage's ``metrics.json`` / ``per_query.json``:
    ``served`` (the stage's ``fusion``), ``rerank`` and ``alone``, each ``{dev, test, dev_seen, ...}``."""
    m = read_json(eval_dir / "metrics.json", rerun="hardneg evaluate")
    pq = read_json(eval_dir / "per_query.json", rerun="hardneg evaluate")
    out: dict[str, Any] = {}
    per_query: dict[str, Any] = {}
    for system, name in SYSTEM_OF.items():
        if name not in m["systems"]:
            continue
        row = {
            "test": {k: round(float(v), 5) for k, v in m["systems"][name].items()},
            "dev": {k: round(float(v), 5) for k, v in m["dev"][name].items()},
        }
        for split in ("dev", "test"):
            for part in ("seen", "unseen"):
                cell = m["parts"][split][name][part]
                row[f"{split}_{part}"] = {k: cell[k] for k in ("mrr@10", "ndcg@10", "n") if k in cell}
        out[system] = row
        per_query[system] = {"test": pq[name]["mrr@10"]}
    for k in ("fusion_weight", "fusion_dev_curve", "fusion_gate", "rerank_depth"):
        out[k] = m.get(k)
    return out, per_query


# the study's system names -> the evaluate stage's
SYSTEM_OF = {"served": "fusion", "rerank": "rerank", "alone": "alone"}
STUDY_VERSION = 2  # 2: the arms run the pipeline's stages (results of version 1 are redone, not mixed in)


def _digest(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StudyStages:
    """The pipeline's stages run for the study's arms under ``work``: each output is made once and reused (by its
    inputs' params), and a published stage folder (its checksums written last) is never redone. ``params_of(arm,
    seed)`` gives an (arm, seed)'s params (:func:`arm_params`)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        work: Path,
        params_of: Any,
        progress: bool = False,
    ):
        self.data_dir, self.work, self.params_of, self.progress = data_dir, Path(work), params_of, progress

    @staticmethod
    def _done(folder: Path) -> bool:
        from hardneg.artifacts import CHECKSUMS_FILE

        return (folder / CHECKSUMS_FILE).exists()

    def space(self, p: Settings) -> Path:
        """embed (from the embedding cache) + reduce with ``p``'s models, weights and PCA: the reduced folder."""
        from hardneg.stages import embed_stage, reduce_stage

        folder = self.work / "spaces" / _digest([p.params["embed"], p.params["reduce"]])
        if not self._done(folder / "reduced"):
            if not self._done(folder / "embeddings"):
                embed_stage(self.data_dir, p, None, folder / "embeddings", progress=self.progress)
            reduce_stage([folder / "embeddings"], p, folder / "reduced")
        return folder / "reduced"

    def retrieved(self, p: Settings, reduced: Path) -> Path:
        """The retrieve stage, once for every arm (the served first stage and the split record)."""
        from hardneg.stages import retrieve_stage

        folder = self.work / "retrieved"
        if not self._done(folder):
            retrieve_stage(self.data_dir, reduced, p, folder)
        return folder

    def mined(self, arm: str, p: Settings, reduced: Path, retrieved: Path) -> Path:
        """The mine stage with the arm's policy and space (one shared run for the arms that sample no mined
        negative)."""
        from hardneg.stages import mine_stage

        folder = self.work / "mined" / _digest([p.params[k] for k in ("embed", "reduce", "mine", "data")])
        if not self._done(folder):
            mine_stage(self.data_dir, reduced, retrieved, p, folder, progress=self.progress)
        return folder

    def run(self, arm: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """train + evaluate one (arm, seed) on the shared inputs; returns (result, per-query test MRR@10)."""
        import shutil

        from hardneg.mine import STATS_FILE
        from hardneg.stages import evaluate_stage, train_stage

        p = settings(self.params_of(arm, seed))
        # the ensemble space with the dev-chosen weights: the first stage's
        base = settings(self.params_of("paper", seed))
        retrieved = self.retrieved(base, self.space(base))
        mine_p = settings(self.params_of("random", seed)) if arm in MINES_NOTHING else p
        mined = self.mined(arm, mine_p, self.space(mine_p), retrieved)
        model = self.work / "models" / f"{arm}-{seed}"
        evaluation = self.work / "evaluations" / f"{arm}-{seed}"
        shutil.rmtree(model, ignore_errors=True)  # an interrupted run's model is retrained
        train_stage(self.data_dir, retrieved, mined, p, model)
        evaluate_stage(self.data_dir, retrieved, model, p, evaluation)
        tm = read_json(model / "train_metrics.json", rerun="hardneg train")
        result, per_query = stage_result(evaluation)
        stats = read_json(mined / STATS_FILE, rerun="hardneg mine") if arm not in MINES_NOTHING else {}
        result["steps"] = tm["steps"]
        result["negatives"] = {
            k: stats[k]
            for k in ("pairs", "pairs_with_negatives", "queries_without_negative", "rejected")
            if k in stats
        }
        result["train"] = {k: tm[k] for k in ("stopped_by", "s_per_step", "training_set")}
        shutil.rmtree(model, ignore_errors=True)  # evaluated: only its numbers are kept
        return result, per_query


# --------------------------------------------------------------------------------------------------- the study


def study_config(
    params: Mapping[str, Any], arms: Sequence[str] | None, seeds: Sequence[int] | None
) -> dict[str, Any]:
    c = dict(params["compare"])
    cfg = {
        "arms": list(arms or c["arms"]),
        "seeds": [int(s) for s in (seeds or c["seeds"])],
        "max_steps": int(c.get("max_steps") or params["train"]["max_steps"]),
        "num_negatives": int(c["num_negatives"]),
        "ensemble_weight_grid": [float(x) for x in c["ensemble_weight_grid"]],
    }
    unknown = sorted(set(cfg["arms"]) - set(ARMS))
    if unknown:
        raise ConfigError(f"unknown compare arm(s) {unknown}; known: {list(ARMS)}")
    return cfg


def _study_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that decide an arm's result. Left out: what the study itself sets per arm or chooses on dev (the
    mining policy, drop_without_negative, the ensemble weights), so setting the defaults to the study's winner
    afterwards does not invalidate the finished runs."""
    import copy

    p = copy.deepcopy(dict(params))
    p["mine"].pop("policy", None)
    p["train"].get("bi_encoder", {}).pop("drop_without_negative", None)
    for m in p["embed"].get("models", []):
        m.pop("weight", None)
    # nor what does not change an arm's numbers: how the corpus is split across embed workers, the encoding batch
    p["embed"].pop("shards", None)
    # nor the evaluate stage's cross-validated dev report (a report: it changes no choice and no number)
    p.get("evaluate", {}).pop("gate_cv_folds", None)
    p["train"].get("bi_encoder", {}).pop("batch_size", None)
    # the reading of the rule with several positives: in the key of the arms that read it only (_arm_key)
    p["mine"].pop("positive_reading", None)
    return p


# arms whose negatives depend on mine.positive_reading (the rule compares candidates with the positive)
PART_SPLITS = ("dev_seen", "dev_unseen", "test_seen", "test_unseen")
WHAT = {
    "alone": "the tuned query tower retrieving from the whole corpus by itself (dense, every document)",
    "rerank": "the tuned model reordering the first stage's top k candidates by itself (k: the served depth)",
    "served": "what the pipeline serves: the tuned model's cosine fused with the first stage over its top k (the "
    "evaluate stage chooses k among evaluate.rerank_depths, the weights and the per-query gate on dev)",
}

READING_ARMS = (
    "paper",
    "paper-drop",
    "positive-aware",
    "hybrid",
    "paper-single-model",
    "paper-pca80",
    "paper-no-pca",
)


def _arm_key(key: Mapping[str, Any], arm: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration key of one arm's result file (``key`` plus what only this arm reads)."""
    if arm in READING_ARMS:
        return {**key, "positive_reading": params["mine"]["positive_reading"]}
    return dict(key)


def _save(path: Path, obj: Any) -> None:
    from hardneg.artifacts import atomic_write_json

    atomic_write_json(path, obj)


# long: the study's driver (inputs, baselines, arms x seeds with resume, summary) is one readable sequence
def run_study(
    data_dir: str | os.PathLike,
    emb_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the study; returns quality.json's content. Finished (arm, seed) runs are kept in
    ``out_dir/runs.json`` and skipped on a rerun with the same configuration."""
    from hardneg.biencoder import BiEncoderConfig
    from hardneg.config import params_hash
    from hardneg.data import load_dataset_for
    from hardneg.lineage import current_lineage

    t_all = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = study_config(params, arms, seeds)
    ds, split_record = load_dataset_for(data_dir, params)
    d = params["data"]
    qrels = {"dev": ds.split_qrels(d["dev_split"]), "test": ds.split_qrels(d["test_split"])}
    qids = sorted(set(qrels["dev"]) | set(qrels["test"]))
    emb = Path(emb_dir)
    slugs = list(json.loads((emb / "manifest.json").read_text(encoding="utf-8"))["models"])
    variance = params["reduce"]["variance"]
    k = int(params["retrieve"]["top_k"])

    # 1. ensemble weights and no-training systems, chosen on dev
    ens_w, ens_curve = choose_ensemble_weights(
        emb, slugs, qrels["dev"], cfg["ensemble_weight_grid"], variance, k
    )
    systems = no_training_systems(ds, emb, slugs, ens_w, params, qids)
    from hardneg.generalization import split_ids, training_positives

    train_docs = training_positives(ds, d["train_split"])
    ids = {split: split_ids(qrels[split], train_docs) for split in ("dev", "test")}
    baseline: dict[str, Any] = {}
    for name, s in systems.items():
        for split in ("dev", "test"):
            mean, _ = metrics_of(s["run"], qrels[split])
            baseline.setdefault(name, {"weight": s.get("weight")})[split] = mean
            for part, row in metrics_by_part(s["run"], qrels[split], ids[split]).items():
                baseline[name][f"{split}_{part}"] = row
    best_nt = max(baseline, key=lambda n: (baseline[n]["dev"]["mrr@10"], baseline[n]["dev"]["ndcg@10"]))
    fs_name = str(params["evaluate"]["first_stage"])
    log.info("no-training systems: best on dev %s; served first stage %s", best_nt, fs_name)

    # 2. the arms run the pipeline's stages (hardneg.stages): one retrieve stage (the served first stage, shared by
    # every arm), per arm its embed + reduce space and its mining run, per (arm, seed) train + evaluate
    from hardneg.embed import model_slug

    wanted = [model_slug(str(m["name"])) for m in params["embed"]["models"]]
    if wanted != slugs:  # the ensemble weights chosen on the embeddings are applied to embed.models in order
        raise ConfigError(
            f"{emb / 'manifest.json'} holds models {slugs}, params embed.models {wanted}: embed with these params first"
        )
    single = max(slugs, key=lambda s: baseline[f"dense:{s}"]["dev"]["mrr@10"])
    single_name = next(
        str(m["name"]) for m in params["embed"]["models"] if model_slug(str(m["name"])) == single
    )
    bcfg0 = BiEncoderConfig.from_params(params)
    if not params["compare"].get("max_steps") and bcfg0.epochs is not None:
        # equal budget: the pair-scaled step count of the full training set, the same for every arm (an arm that
        # drops queries, paper-drop, must not get fewer steps)
        from hardneg.biencoder import planned_steps, training_set

        cfg["max_steps"] = planned_steps(bcfg0, training_set(ds, None, d["train_split"]))

    def params_of(arm: str, seed: int) -> dict[str, Any]:
        return arm_params(
            params,
            arm,
            seed=seed,
            max_steps=cfg["max_steps"],
            num_negatives=cfg["num_negatives"],
            ensemble_weights=ens_w,
            single_model=single_name,
        )

    key = {
        "study": STUDY_VERSION,
        "cfg": {k_: v for k_, v in cfg.items() if k_ not in ("arms", "seeds")},
        "params": params_hash(
            _study_params(params), ["data", "embed", "reduce", "mine", "retrieve", "train", "evaluate"]
        ),
    }
    # one file per (arm, seed), written atomically: resumable, and several processes (e.g. one per seed) can share
    # the folder; a file made under another configuration key is ignored (and redone)
    runs_dir = out / "runs" / key["params"]
    stages = StudyStages(data_dir, out / "stages" / key["params"], params_of, progress)

    def load_state() -> dict[str, Any]:
        st: dict[str, Any] = {"key": key, "arms": {}, "per_query": {}}
        for f in sorted(runs_dir.glob("*.json")) if runs_dir.exists() else []:
            r = read_json(f, rerun="hardneg compare")
            if r.get("key") != _arm_key(key, r.get("arm"), params):
                continue
            st["arms"].setdefault(r["arm"], {})[str(r["seed"])] = r["result"]
            st["per_query"].setdefault(r["arm"], {})[str(r["seed"])] = r["per_query"]
        return st

    # 3. arms x seeds (resumable)
    for seed in cfg["seeds"]:  # seed-major: an interrupted study has every arm at the same number of seeds
        for arm in cfg["arms"]:
            done = runs_dir / f"{arm}-{seed}.json"
            arm_key = _arm_key(key, arm, params)
            if done.exists() and read_json(done, rerun="hardneg compare").get("key") == arm_key:
                continue
            t0 = time.perf_counter()
            result, pq = stages.run(arm, seed)
            result["commit"] = current_lineage(None).git_commit  # each arm records the commit it ran at
            result["seconds"] = round(time.perf_counter() - t0, 1)
            _save(done, {"key": arm_key, "arm": arm, "seed": seed, "result": result, "per_query": pq})
            log.info(
                "%s seed %d: served test MRR@10 %.4f, alone %.4f (%.0f s)",
                arm,
                seed,
                result["served"]["test"]["mrr@10"],
                result["alone"]["test"]["mrr@10"],
                result["seconds"],
            )

    # 4. summary (over every finished run in the folder, including other processes')
    state = load_state()
    state["arms"] = {a: state["arms"][a] for a in cfg["arms"] if a in state["arms"]}
    state["per_query"] = {a: state["per_query"][a] for a in state["arms"]}
    summ = summarize(state, params)
    best = summ["best_policy"]
    arm_best = summ["arms"][best]

    def means(system: str) -> dict[str, Any]:
        out = {s: {m: v["mean"] for m, v in arm_best[system][s].items()} for s in ("dev", "test")}
        for s in PART_SPLITS:
            if s in arm_best[system]:
                out[s] = {m: (v if m == "n" else v["mean"]) for m, v in arm_best[system][s].items()}
                out[s].setdefault("n", 0)
        return out

    def nt(name: str) -> dict[str, Any]:
        return {s: baseline[name][s] for s in ("dev", "test", *PART_SPLITS) if s in baseline[name]}

    lin = current_lineage(None)
    quality = {
        "dataset": str(data_dir),
        "commit": lin.git_commit,
        "data_version": lin.data_version,
        "params_hash": key["params"],
        "mine_positive_reading": params["mine"]["positive_reading"],  # the reading of the READING_ARMS' rule
        "splits": split_record,
        "config": cfg,
        "ensemble_weights": {"models": slugs, "chosen_on_dev": ens_w, "dev_curve": ens_curve},
        "no_training": baseline,
        "bm25": nt("bm25"),
        "dense": nt("dense"),
        "no_training_hybrid": {"system": best_nt, **nt(best_nt)},
        "first_stage": {"system": fs_name, **nt(fs_name)},
        # evaluate.first_stage's default must be this (tests/test_readme_numbers.py)
        "first_stage_best_on_dev": max(
            ("dense", "bm25", "hybrid"),
            key=lambda n: (baseline[n]["dev"]["mrr@10"], baseline[n]["dev"]["ndcg@10"]),
        ),
        "best_policy": best,
        # the rerank depth the evaluate stage chose on dev for the best arm, per seed (its served system's k)
        "rerank_depth": " / ".join(
            str(state["arms"][best][s].get("rerank_depth")) for s in sorted(state["arms"][best], key=int)
        ),
        "seen_unseen": "seen: a relevant document of the query is a positive of a training query (the train split "
        "after the dev top-up); unseen: none is (hardneg.generalization)",
        "reranker_alone": {"arm": best, "what": WHAT["alone"], **means("alone")},
        "reranker_rerank": {"arm": best, "what": WHAT["rerank"], **means("rerank")},
        "served": {"arm": best, "what": WHAT["served"], **means("served")},
        "arms": summ["arms"],
        "steps_per_arm": {a: r["steps"] for a, r in summ["arms"].items()},
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    _save(out / QUALITY_JSON, quality)
    _save(out / PER_QUERY_JSON, state["per_query"])
    (out / REPORT_HTML).write_text(report_html(quality), encoding="utf-8")
    return quality
