"""The evaluation protocol's splits: a dev split large enough to choose with, carved from train (seeded, recorded).

Choices (checkpoint, fusion weight, ensemble weights, negative policy, learning rate) are made on dev and test is read
once per configuration at the end. A dev split of ~80 queries cannot separate configurations whose MRR@10 differs by
0.01-0.02 (one rank move of one query is ~0.006), and many public datasets ship no dev split at all. So, before any
stage reads labels, :func:`prepare_splits` moves a seeded random sample of *whole* training queries (all their qrels
rows) into dev until dev has ``data.dev_min_queries`` queries (at most ``data.dev_max_fraction`` of the training
queries move). The result is the same on every machine for the same data and params, and the record (which queries
moved, a hash of their ids) goes into lineage and run summaries. Test is never touched.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hardneg.errors import ConfigError, HardnegError


@dataclass(frozen=True)
class SplitConfig:
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    dev_min_queries: int = 200
    dev_max_fraction: float = 0.25
    dev_seed: int = 13

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SplitConfig:
        d = dict(params.get("data", {}))
        cfg = cls(
            train_split=str(d.get("train_split", "train")),
            dev_split=str(d.get("dev_split", "dev")),
            test_split=str(d.get("test_split", "test")),
            dev_min_queries=int(d.get("dev_min_queries", 200)),
            dev_max_fraction=float(d.get("dev_max_fraction", 0.25)),
            dev_seed=int(d.get("dev_seed", 13)),
        )
        if cfg.dev_min_queries < 0 or not 0.0 <= cfg.dev_max_fraction < 1.0:
            raise ConfigError(
                "data.dev_min_queries must be >= 0 and data.dev_max_fraction in [0, 1) "
                f"(got {cfg.dev_min_queries}, {cfg.dev_max_fraction})"
            )
        return cfg


def prepare_splits(dataset: Any, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Top up (or create) the dev split from train; returns ``(dataset, record)``. The dataset is modified in place
    (its qrels dict) and returned. Idempotent: a dataset that already has enough dev queries is left as it is."""
    cfg = SplitConfig.from_params(params)
    if cfg.train_split not in dataset.qrels:
        raise HardnegError(
            f"{dataset.root}: no qrels/{cfg.train_split}.tsv; training needs it (data.train_split in params.yaml)"
        )
    train = dataset.qrels[cfg.train_split]
    dev = dataset.qrels.get(cfg.dev_split, {})
    dev_n = sum(1 for docs in dev.values() if any(s >= 1 for s in docs.values()))
    record: dict[str, Any] = {
        "dev_split": cfg.dev_split,
        "dev_queries_shipped": dev_n,
        "dev_min_queries": cfg.dev_min_queries,
        "seed": cfg.dev_seed,
        "moved_from_train": 0,
    }
    need = cfg.dev_min_queries - dev_n
    eligible = sorted(q for q, docs in train.items() if any(s >= 1 for s in docs.values()))
    cap = int(cfg.dev_max_fraction * len(eligible))
    n_move = max(0, min(need, cap))
    if n_move > 0:
        moved = sorted(random.Random(cfg.dev_seed).sample(eligible, n_move))
        new_dev = {q: dict(docs) for q, docs in dev.items()}
        for q in moved:
            new_dev[q] = dict(train[q])
        dataset.qrels[cfg.dev_split] = new_dev
        dataset.qrels[cfg.train_split] = {q: docs for q, docs in train.items() if q not in set(moved)}
        record.update(
            moved_from_train=n_move,
            moved_query_ids_sha256=hashlib.sha256(json.dumps(moved).encode()).hexdigest(),
        )
    record["dev_queries"] = dev_n + n_move
    record["train_queries"] = len(eligible) - n_move
    if record["dev_queries"] == 0:
        raise HardnegError(
            f"{dataset.root}: no dev queries and none can be carved from {cfg.train_split} "
            "(raise data.dev_max_fraction or add qrels/dev.tsv)"
        )
    return dataset, record


def load_dataset_for(data_dir: Any, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Load a BEIR folder and prepare its splits as every stage must see them."""
    from hardneg.data import load_dataset

    return prepare_splits(load_dataset(data_dir), params)
