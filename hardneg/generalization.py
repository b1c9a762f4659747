"""Seen / unseen queries, document-disjoint folds and the selection rule that guards unseen queries.

**Seen and unseen.** A dev or test query is *seen* when one of its relevant documents is a labelled positive of a
query the model trained on (the train split after the dev top-up), and *unseen* otherwise. A model can win on seen
queries by learning which documents were relevant before; only unseen queries show whether it learned relevance.
Every evaluation reports ``all`` / ``seen`` / ``unseen`` (:func:`parts`), each with its query count.

**Document-disjoint folds** (:func:`document_folds`, the generalisation benchmark). The positive documents of all
labelled queries are split into ``k`` folds by sha256(seed, doc id). For fold *i*, the held-out documents ``H`` are
that fold's documents; the *test* queries are the queries with a positive in ``H`` (at most ``max_test_fraction`` of
all queries, chosen by sha256 order), judged on their ``H`` positives only (their other positives are left out of
both the qrels and the candidate lists: they are known-relevant but not what this fold measures); the *train*
queries are all the others, with every ``H`` document removed from their positives (a query left without one is
dropped), and ``H`` documents are never mined as negatives either (:func:`exclude_documents`). So no relevant
document of a test query is ever seen in training, which is what a team retraining on last quarter's queries and
serving next quarter's, about new documents, faces.

**Selection rule** (:func:`select`): among configurations evaluated on dev, keep those that pass two guards on the
dev-unseen queries (applied when dev has at least ``min_unseen`` of them; else recorded as skipped): the *served
guard*, served MRR@10 not below the no-training baseline's on the same queries, and the *model guard*, the tuned
model alone (reordering the same candidates) not below the untuned model alone there (when the untuned reference was
measured). The served guard alone became vacuous once the evaluate stage's own guards pinned the served dev-unseen
queries at the first stage for every configuration; the model guard asks what the issue asks: that the model itself
did not get worse on queries about documents it never saw labelled. Choose the best served dev MRR@10 (all queries)
among the configurations passing both (ties: the earlier configuration); if none does, the best tuned-alone
dev-unseen MRR@10 among those passing the served guard; if none passes that either, the best served dev-unseen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hardneg.errors import HardnegError

PARTS = ("all", "seen", "unseen")


def training_positives(dataset: Any, train_split: str) -> set[str]:
    """Every document that is a labelled positive (score >= 1) of a query of ``train_split``."""
    return {d for docs in dataset.split_qrels(train_split).values() for d in docs}


def seen_queries(qrels: Mapping[str, Mapping[str, int]], train_docs: set[str]) -> set[str]:
    """The queries of ``qrels`` with a relevant document (score >= 1) among ``train_docs``."""
    return {q for q, docs in qrels.items() if any(s >= 1 and d in train_docs for d, s in docs.items())}


def split_ids(qrels: Mapping[str, Mapping[str, int]], train_docs: set[str]) -> dict[str, list[str]]:
    """``{"all", "seen", "unseen"}`` -> sorted query ids of ``qrels`` (queries with a relevant document only)."""
    rel = sorted(q for q, docs in qrels.items() if any(s >= 1 for s in docs.values()))
    seen = seen_queries(qrels, train_docs)
    return {"all": rel, "seen": [q for q in rel if q in seen], "unseen": [q for q in rel if q not in seen]}


def parts(
    per_query: Mapping[str, Mapping[str, float]], ids: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """Means of per-query metrics (``metric -> {qid: value}``) over each part: ``{part: {metric: mean, "n": n}}``;
    a part without queries has ``n`` 0 and no metric."""
    out: dict[str, dict[str, Any]] = {}
    for part, qids in ids.items():
        row: dict[str, Any] = {"n": len(qids)}
        if qids:
            for metric, values in per_query.items():
                row[metric] = round(sum(float(values.get(q, 0.0)) for q in qids) / len(qids), 5)
        out[part] = row
    return out


# ------------------------------------------------------------------------------------------------------ folds


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\t{key}".encode()).hexdigest()


@dataclass(frozen=True)
class Fold:
    """One document-disjoint fold: train qrels (held-out documents removed), test qrels (held-out documents only),
    the held-out documents, and per query the known-relevant documents left out of its candidates (a test query's
    positives outside the held-out set; a train query's positives inside it, for the dev split carved from train)."""

    index: int
    train: dict[str, dict[str, int]]
    test: dict[str, dict[str, int]]
    held_out: frozenset[str]
    ignore: dict[str, frozenset[str]]

    def record(self) -> dict[str, Any]:
        return {
            "fold": self.index,
            "train_queries": len(self.train),
            "train_pairs": sum(len(v) for v in self.train.values()),
            "test_queries": len(self.test),
            "test_pairs": sum(len(v) for v in self.test.values()),
            "held_out_documents": len(self.held_out),
            "test_ids_sha256": hashlib.sha256("\n".join(sorted(self.test)).encode()).hexdigest(),
        }


def pooled_qrels(dataset: Any, splits: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """The relevant pairs (score >= 1) of every split (or of ``splits``) in one qrels; a query in two splits keeps
    the higher score of a shared document."""
    out: dict[str, dict[str, int]] = {}
    for split in splits or sorted(dataset.qrels):
        for q, docs in dataset.split_qrels(split).items():
            row = out.setdefault(q, {})
            for d, s in docs.items():
                row[d] = max(int(s), row.get(d, 0))
    return out


def document_folds(
    qrels: Mapping[str, Mapping[str, int]], k: int, seed: int = 13, max_test_fraction: float = 0.3
) -> list[Fold]:
    """``k`` document-disjoint folds of ``qrels`` (module docstring)."""
    if k < 2:
        raise HardnegError(f"document folds need k >= 2, got {k}")
    qrels = {q: {d: s for d, s in row.items() if s >= 1} for q, row in qrels.items()}
    qrels = {q: row for q, row in qrels.items() if row}
    docs = sorted({d for row in qrels.values() for d in row})
    fold_of = {d: i % k for i, d in enumerate(sorted(docs, key=lambda d: _order(seed, d)))}
    max_test = max(1, int(max_test_fraction * len(qrels)))
    folds = []
    for i in range(k):
        held = frozenset(d for d in docs if fold_of[d] == i)
        touching = sorted((q for q, row in qrels.items() if held & set(row)), key=lambda q: _order(seed, q))
        test_q = set(touching[:max_test])
        test = {q: {d: s for d, s in qrels[q].items() if d in held} for q in sorted(test_q)}
        # test queries: their positives outside H are known-relevant but not what the fold measures; train (and
        # the dev carved from it): their H positives were removed from the labels, so they leave the candidates too
        # (never judged non-relevant)
        ignore = {q: frozenset(d for d in qrels[q] if d not in held) for q in sorted(test_q)}
        train = {}
        for q in sorted(qrels):
            if q in test_q:
                continue
            row = {d: s for d, s in qrels[q].items() if d not in held}
            if row:
                train[q] = row
                ignore[q] = frozenset(d for d in qrels[q] if d in held)
        folds.append(Fold(i, train, test, held, {q: v for q, v in ignore.items() if v}))
    return folds


def fold_dataset(dataset: Any, fold: Fold, train_split: str = "train", test_split: str = "test") -> Any:
    """``dataset`` with only two splits, the fold's train and test qrels (a dev split is carved from train by
    :func:`hardneg.data.prepare_splits`, as for any collection without one)."""
    return replace(dataset, qrels={train_split: dict(fold.train), test_split: dict(fold.test)})


def exclude_documents(
    rows: Sequence[Mapping[str, Any]] | None, docs: Iterable[str]
) -> list[dict[str, Any]] | None:
    """Mined negatives rows without the ``docs`` (held-out documents are never trained on, not even as negatives)."""
    if rows is None:
        return None
    drop = set(docs)
    out = []
    for r in rows:
        keep = [i for i, n in enumerate(r["negative_ids"]) if str(n) not in drop]
        row = dict(r)
        for key in ("negative_ids", "d_qn", "d_pn"):  # the per-negative lists stay aligned
            if isinstance(r.get(key), list) and len(r[key]) == len(r["negative_ids"]):
                row[key] = [r[key][i] for i in keep]
        out.append(row)
    return out


def drop_candidates(
    run: Mapping[str, Mapping[str, float]], ignore: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, float]]:
    """``run`` without each query's ignored documents (a fold's known-relevant documents outside the held-out set)."""
    out = {}
    for q, row in run.items():
        skip = set(ignore.get(q, ()))
        out[q] = {d: s for d, s in row.items() if d not in skip}
    return out


# --------------------------------------------------------------------------------------------- selection rule


def _model_guard_applies(models: Mapping[str, float | None], untuned_unseen: float | None) -> bool:
    """The model guard needs the untuned reference and at least one candidate's tuned-alone number."""
    return untuned_unseen is not None and any(v is not None for v in models.values())


def _passes_model_guard(model_unseen: float | None, untuned_unseen: float | None, applies: bool) -> bool:
    """Where the guard applies, a candidate without its tuned-alone number fails (it was not checked)."""
    if not applies:
        return True
    return model_unseen is not None and model_unseen >= float(untuned_unseen) - 1e-9


def select(
    candidates: Mapping[str, Mapping[str, Any]],
    baseline_dev_unseen: float | None,
    min_unseen: int = 30,
    *,
    model_dev_unseen: Mapping[str, float | None] | None = None,
    untuned_dev_unseen: float | None = None,
) -> dict[str, Any]:
    """The selection rule (module docstring). ``candidates``: name -> ``{"dev": {"all": {"mrr@10"}, "unseen":
    {"mrr@10", "n"}}}`` (served system); ``baseline_dev_unseen``: the no-training MRR@10 on the same dev-unseen
    queries; ``model_dev_unseen``: name -> the tuned model alone's dev-unseen MRR@10 and ``untuned_dev_unseen``: the
    untuned model alone's (the model guard; skipped when either is missing). Returns ``{"chosen", "guard",
    "passed": [...], "passed_served_guard": [...], "rule"}``."""
    if not candidates:
        raise HardnegError("nothing to choose from")
    names = list(candidates)
    n_unseen = int(candidates[names[0]]["dev"]["unseen"].get("n", 0))
    guard = baseline_dev_unseen is not None and n_unseen >= min_unseen
    model = dict(model_dev_unseen or {})
    model_guard = guard and _model_guard_applies(model, untuned_dev_unseen)
    if guard:
        served_ok = [
            n for n in names if candidates[n]["dev"]["unseen"]["mrr@10"] >= float(baseline_dev_unseen) - 1e-9
        ]
        passed = [n for n in served_ok if _passes_model_guard(model.get(n), untuned_dev_unseen, model_guard)]
    else:
        served_ok = passed = names
    if passed:
        best = max(passed, key=lambda n: (candidates[n]["dev"]["all"]["mrr@10"], -names.index(n)))
    elif served_ok:
        best = max(served_ok, key=lambda n: (model.get(n) or 0.0, -names.index(n)))
    else:
        best = max(names, key=lambda n: (candidates[n]["dev"]["unseen"]["mrr@10"], -names.index(n)))
    return {
        "chosen": best,
        "guard": "applied" if guard else f"skipped (dev has {n_unseen} unseen queries, need {min_unseen})",
        "model_guard": "applied" if model_guard else "skipped",
        "baseline_dev_unseen_mrr@10": baseline_dev_unseen,
        "untuned_dev_unseen_mrr@10": untuned_dev_unseen,
        "passed": passed,
        "passed_served_guard": served_ok,
        "rule": RULE,
    }


RULE = (
    "best served dev MRR@10 among configurations that pass both guards on the dev-unseen queries: served MRR@10 >= "
    "the no-training baseline's and the tuned model alone >= the untuned model alone on the same queries (guards "
    "skipped when dev has fewer than min_unseen unseen queries); if none passes both, the best tuned-alone "
    "dev-unseen MRR@10 among those passing the served guard; if none passes that, the best served dev-unseen MRR@10"
)


RULE_ACROSS = (
    "configurations measured on every collection; pass = on every collection with >= "
    "{min_unseen} dev-unseen queries, served dev-unseen MRR@10 >= the no-training baseline's and the tuned "
    "model alone's dev-unseen MRR@10 >= the untuned model alone's; chosen = the best mean served dev MRR@10 gain "
    "over the no-training baseline across collections among those passing (none passing: the best mean "
    "tuned-alone dev-unseen gain over the untuned model among those passing the served guard, else the best "
    "mean served dev-unseen gain)"
)


def _across_guards(
    collections: Mapping[str, Mapping[str, Mapping[str, Any]]],
    baselines: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    guarded: Sequence[str],
    models: Mapping[str, Mapping[str, float | None]],
    untuned: Mapping[str, float | None],
) -> tuple[list[str], list[str], dict[str, bool]]:
    """:func:`select_across`'s guards: (passing the served guard, passing both, where the model guard applies)."""
    served_ok = [
        n
        for n in names
        if all(
            collections[c][n]["unseen"]["mrr@10"] >= float(baselines[c]["unseen"]["mrr@10"]) - 1e-9
            for c in guarded
        )
    ]
    model_applies = {
        c: _model_guard_applies({n: models.get(c, {}).get(n) for n in names}, untuned.get(c)) for c in guarded
    }
    passed = [
        n
        for n in served_ok
        if all(
            _passes_model_guard(models.get(c, {}).get(n), untuned.get(c), model_applies[c]) for c in guarded
        )
    ]
    return served_ok, passed, model_applies


def select_across(
    collections: Mapping[str, Mapping[str, Mapping[str, Any]]],
    baselines: Mapping[str, Mapping[str, Any]],
    min_unseen: int = 30,
    *,
    models: Mapping[str, Mapping[str, float | None]] | None = None,
    untuned: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """The selection rule over several collections (``RULE_ACROSS``; defaults must not be tuned to one corpus).
    ``collections[c][config]`` = the served system's dev parts ``{"all": {"mrr@10"}, "unseen": {"mrr@10", "n"}}``
    (seed means); ``baselines[c]`` = the no-training dev parts; ``models[c][config]`` = the tuned model alone's
    dev-unseen MRR@10 and ``untuned[c]`` = the untuned model alone's (the model guard, where both are known). Ties:
    the earlier configuration."""
    names = [n for n in next(iter(collections.values())) if all(n in c for c in collections.values())]
    if not names:
        raise HardnegError("no configuration was measured on every collection")
    guarded = [
        c for c, cfgs in collections.items() if int(cfgs[names[0]]["unseen"].get("n", 0)) >= min_unseen
    ]
    models, untuned = dict(models or {}), dict(untuned or {})

    def gain(n: str, part: str, where: Sequence[str]) -> float:
        return sum(
            collections[c][n][part]["mrr@10"] - float(baselines[c][part]["mrr@10"]) for c in where
        ) / max(1, len(where))

    def model_gain(n: str, where: Sequence[str]) -> float | None:
        diffs = [
            models[c][n] - float(untuned[c])
            for c in where
            if models.get(c, {}).get(n) is not None and untuned.get(c) is not None
        ]
        return sum(diffs) / len(diffs) if diffs else None

    served_ok, passed, model_applies = _across_guards(collections, baselines, names, guarded, models, untuned)
    mg = {n: model_gain(n, guarded) for n in names}
    table = {
        n: {
            "mean_dev_gain": round(gain(n, "all", list(collections)), 5),
            "mean_dev_unseen_gain": round(gain(n, "unseen", guarded), 5) if guarded else None,
            "mean_dev_unseen_model_gain": None if mg[n] is None else round(mg[n], 5),
            "passes_served_guard": n in served_ok,
            "passes": n in passed,
        }
        for n in names
    }
    if passed:
        chosen = max(passed, key=lambda n: (gain(n, "all", list(collections)), -names.index(n)))
    elif served_ok:  # every one of them failed the model guard, which therefore applied: numbers exist
        chosen = max(served_ok, key=lambda n: (mg[n] if mg[n] is not None else -1.0, -names.index(n)))
    else:
        chosen = max(names, key=lambda n: (gain(n, "unseen", guarded), -names.index(n)))
    return {
        "chosen": chosen,
        "collections": list(collections),
        "guarded": guarded,
        "model_guard": {c: "applied" if model_applies.get(c) else "skipped" for c in collections},
        "table": table,
        "rule": RULE_ACROSS.format(min_unseen=min_unseen),
    }
