"""The first stage and the splits, decided once by the ``retrieve`` stage and read by every stage after it.

``hardneg retrieve`` (after reduce) carves / tops up the dev split (:func:`hardneg.data.prepare_splits`), builds the
configured first stage (``evaluate.first_stage``: dense | bm25 | hybrid, the hybrid's BM25 weight chosen on dev) for
the dev and test queries, and writes one folder:

- ``splits.json``: the train / dev query ids after the carve and top-up, their sha256 and the record
  (:func:`hardneg.data.split_assignment`); mine, train, evaluate and export apply it instead of carving again;
- ``first_stage.json``: ``{"name", "bm25_weight", "dev_curve", "top_k", "queries": {split: n}}``;
- ``runs.json``: ``{"first_stage": run, "dense": run, "bm25": run}`` (``retrieve.top_k`` candidates per query);
- ``lineage.json`` and ``checksums.sha256``.

:func:`compute` is the one implementation of the first stage (the stage and the in-memory generalisation benchmark
call it); :class:`Retrieved` is the one reader.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.artifacts import Run
from hardneg.errors import HardnegError
from hardneg.settings import section

log = logging.getLogger(__name__)

FIRST_STAGES = ("dense", "bm25", "hybrid")
SPLITS_FILE = "splits.json"
FIRST_STAGE_FILE = "first_stage.json"
RUNS_FILE = "runs.json"
RERUN = "hardneg retrieve"


def compute(
    dataset: Any, reduced_dir: str | os.PathLike, params: Mapping[str, Any], splits: Sequence[str]
) -> tuple[Run, dict[str, Any]]:
    """The configured first stage (``evaluate.first_stage``) for the queries of ``splits``, plus ``{"name",
    "bm25_weight", "dev_curve", "runs": {"dense", "bm25"}}``. The hybrid's BM25 weight is always chosen on the dev
    split (the same way whichever splits are asked for)."""
    from hardneg.baselines import tune_hybrid
    from hardneg.evaluate import first_stage_runs, restrict
    from hardneg.retrieve import fuse_runs

    name = section(params, "evaluate").first_stage  # dense | bm25 | hybrid (typed by hardneg.settings)
    dev = section(params, "data").dev_split
    want = list(dict.fromkeys([dev, *splits]))
    runs = first_stage_runs(dataset, reduced_dir, params, splits=want, bm25=name != "dense")
    qids = [q for s in splits if s in dataset.qrels for q in dataset.split_qrels(s)]
    info: dict[str, Any] = {"name": name, "bm25_weight": None}
    if name == "hybrid":
        k = section(params, "retrieve").top_k
        weights = [float(w) for w in section(params, "evaluate").fusion_weights]
        w, curve = tune_hybrid(runs["bm25"], runs["dense"], dataset.split_qrels(dev), weights, k)
        info.update(bm25_weight=w, dev_curve=curve)
        run = fuse_runs(runs["bm25"], runs["dense"], w, k)
    else:
        run = runs[name]
    info["runs"] = {n: restrict(r, qids) for n, r in runs.items()}
    return restrict(run, qids), info


def write_retrieved(
    dataset: Any,
    record: Mapping[str, Any],
    reduced_dir: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Compute the first stage of the dev and test queries of ``dataset`` (already split: :func:`prepare_splits`)
    and write the retrieve folder (module docstring). Returns ``first_stage.json``'s content."""
    from hardneg.artifacts import atomic_write_json, staged_output
    from hardneg.config import params_hash
    from hardneg.data import split_assignment
    from hardneg.lineage import current_lineage, read_lineage, sha256_file

    d = section(params, "data")
    splits = [s for s in dict.fromkeys([d.dev_split, d.test_split]) if s in dataset.qrels]
    run, info = compute(dataset, reduced_dir, params, splits)
    summary = {
        "name": info["name"],
        "bm25_weight": info["bm25_weight"],
        "dev_curve": info.get("dev_curve"),
        "top_k": section(params, "retrieve").top_k,
        "queries": {s: len(dataset.split_qrels(s)) for s in splits},
    }
    try:
        lin = read_lineage(reduced_dir)
    except HardnegError:
        lin = current_lineage(None)
    with staged_output(out_dir, RERUN) as out:
        atomic_write_json(out / SPLITS_FILE, split_assignment(dataset, record, params))
        atomic_write_json(out / FIRST_STAGE_FILE, summary)
        atomic_write_json(out / RUNS_FILE, {"first_stage": run, **info["runs"]})
        lin.params_hash = params_hash(dict(params), ["data", "retrieve", "evaluate"])
        from hardneg.lineage import write_lineage

        write_lineage(out, lin.derive(splits_sha256=sha256_file(out / SPLITS_FILE)))
    log.info("first stage %s -> %s (%s)", info["name"], out_dir, summary["queries"])
    return summary


@dataclass(frozen=True)
class Retrieved:
    """A retrieve folder, verified: ``splits`` (for :func:`hardneg.data.load_dataset_for`), ``info``
    (``first_stage.json``) and the runs."""

    root: Path
    splits: dict[str, Any]
    info: dict[str, Any]
    runs: dict[str, Run]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Retrieved:
        from hardneg.artifacts import read_json, verify_checksums

        root = Path(folder)
        if not root.is_dir():
            raise HardnegError(f"{root}: no retrieve output here (run `{RERUN}` first)")
        verify_checksums(root, RERUN, required=(SPLITS_FILE, FIRST_STAGE_FILE, RUNS_FILE))
        return cls(
            root,
            read_json(root / SPLITS_FILE, rerun=RERUN),
            read_json(root / FIRST_STAGE_FILE, rerun=RERUN),
            read_json(root / RUNS_FILE, rerun=RERUN),
        )

    def first_stage(self, dataset: Any, splits: Sequence[str]) -> tuple[Run, dict[str, Any]]:
        """The first stage's run for the queries of ``splits`` of ``dataset`` and ``{**first_stage.json, "runs":
        {"dense", "bm25"}}`` (the component runs, same queries), as :func:`compute` returns them."""
        from hardneg.evaluate import restrict

        qids = [q for s in splits if s in dataset.qrels for q in dataset.split_qrels(s)]
        missing = [q for q in qids if q not in self.runs["first_stage"]]
        if missing:
            raise HardnegError(
                f"{self.root}: {len(missing)} queries of {list(splits)} have no first-stage run "
                f"(e.g. {missing[:5]}): it was built for other data or splits; rerun `{RERUN}`"
            )
        runs = {n: restrict(r, qids) for n, r in self.runs.items() if n != "first_stage"}
        return restrict(self.runs["first_stage"], qids), {**self.info, "runs": runs}
