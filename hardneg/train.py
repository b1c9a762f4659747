"""Cross-encoder reranker training: a plain, deterministic torch loop (no datasets/accelerate).

Each training example is a *query group*: the query with [positive, negative_1, ..., negative_{G-1}] from one row of
``negatives.jsonl``; a row with fewer negatives is padded by re-sampling its own negatives, a row with none is dropped
(the paper's rule: no triplet without a negative). Losses over a group's logits ``s`` (``s[0]`` = positive):

- ``listwise``: softmax cross-entropy, ``-log softmax(s)[0]``;
- ``bce``: binary cross-entropy with labels [1, 0, ..., 0];
- ``margin``: the paper's triplet hinge, ``mean_n relu(m - s[0] + s[n])``.

AdamW with linear warmup and linear decay over ``max_steps`` (the training length: same commit + data + params = same
model on any machine); ``time_cap_min`` is only a safety net that stops early and is recorded (``stopped_by``).
With a dev run, MRR@10 of reranking its top ``eval_depth`` is measured every ``eval_every`` steps and at the end
(also at step 0 with ``eval_at_start``); the best checkpoint is kept in memory and saved. Output: the CrossEncoder folder +
its model card (``hardneg_model.json``, :mod:`hardneg.model_card`) + ``lineage.json`` + ``train_metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import TRAIN_METRICS_FILE
from hardneg.errors import ConfigError, HardnegError
from hardneg.hw import apply_torch_threads
from hardneg.model_card import ModelCard, write_card
from hardneg.settings import Train, TrainerView

log = logging.getLogger(__name__)

LOSSES = ("listwise", "bce", "margin")


# ------------------------------------------------------------------------------------------------------ inputs


def load_negatives(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``negatives.jsonl`` (``{query_id, positive_id, negative_ids, ...}``; a folder is accepted too). The
    ``hardneg mine`` folder's checksums are verified first: a half-written or modified file is refused."""
    from hardneg.artifacts import read_jsonl, verify_checksums

    p = Path(path)
    if p.is_dir():
        p = p / "negatives.jsonl"
    if not p.exists():
        raise HardnegError(f"negatives file not found: {p} (run `hardneg mine` first)")
    verify_checksums(p.parent, "hardneg mine")
    return read_jsonl(p, required=("query_id", "positive_id", "negative_ids"), rerun="hardneg mine")


def rows_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["query_id"], r["positive_id"], list(r["negative_ids"])]).encode())
    return h.hexdigest()


def build_groups(
    dataset: Any, rows: Iterable[Mapping[str, Any]]
) -> tuple[list[tuple[str, str, list[str]]], dict[str, int]]:
    """``[(query_id, positive_id, negative_ids)]`` of usable rows (ids checked against the dataset; negatives that are
    the positive or repeated are removed); rows without any negative are dropped and counted."""
    groups: list[tuple[str, str, list[str]]] = []
    stats = {"rows": 0, "dropped_no_negatives": 0, "negatives_equal_to_positive": 0}
    for r in rows:
        stats["rows"] += 1
        q, p = str(r["query_id"]), str(r["positive_id"])
        if q not in dataset.queries:
            raise HardnegError(
                f"negatives row names query '{q}', which is not in the dataset ({dataset.root})"
            )
        if p not in dataset.corpus:
            raise HardnegError(
                f"negatives row names positive '{p}', which is not in the corpus ({dataset.root})"
            )
        negs: list[str] = []
        for n in r["negative_ids"]:
            n = str(n)
            if n == p:
                stats["negatives_equal_to_positive"] += 1
                continue
            if n not in dataset.corpus:
                raise HardnegError(
                    f"negatives row for query '{q}' names document '{n}', which is not in the corpus"
                )
            if n not in negs:
                negs.append(n)
        if not negs:
            stats["dropped_no_negatives"] += 1
            continue
        groups.append((q, p, negs))
    stats["groups"] = len(groups)
    return groups, stats


def sample_negatives(negs: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` negatives of a row: a random subset when it has more, all of them padded by re-sampling when fewer."""
    if len(negs) >= n:
        return [negs[i] for i in sorted(rng.choice(len(negs), size=n, replace=False))]
    extra = rng.choice(len(negs), size=n - len(negs), replace=True)
    return list(negs) + [negs[i] for i in extra]


def group_loss(logits: Any, loss: str, margin: float = 1.0) -> Any:
    """Loss of a [B, G] logit matrix whose column 0 is the positive."""
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    if loss == "listwise":
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))
    if loss == "bce":
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)
    if loss == "margin":
        return F.relu(margin - logits[:, :1] + logits[:, 1:]).mean()
    raise ConfigError(f"unknown train.loss '{loss}': use one of {list(LOSSES)}")


def lr_factor(step: int, warmup: int, horizon: int) -> float:
    """Linear warmup over ``warmup`` steps, then linear decay to 0 at ``horizon``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (horizon - step) / max(1, horizon - warmup))


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------------------- training


def _dev_mrr(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    dev_run: Mapping[str, Mapping[str, float]],
    dev_qrels: Any,
    depth: int,
    max_length: int,
    bf16: bool,
    batch_size: int,
) -> float:
    from hardneg.evaluate import combine, evaluate_run, rerank_scores, top_candidates
    from hardneg.scoring import score_pairs

    cand = top_candidates(dev_run, depth)
    qtext = {q: dataset.queries[q].text for q in cand}
    dtext = {d: dataset.corpus[d].full_text for docs in cand.values() for d in docs}
    scores = rerank_scores(
        lambda pairs: score_pairs(model, tokenizer, pairs, max_length, batch_size, bf16), qtext, dtext, cand
    )
    return evaluate_run(combine(dev_run, scores, depth), dev_qrels, ("mrr@10",)).mean["mrr@10"]


@dataclass(frozen=True)
class CrossEncoderConfig(TrainerView):
    """What the cross-encoder trainer reads: the typed ``train`` section (its common keys and
    ``train.cross_encoder``) read flat (:class:`hardneg.settings.TrainerView`, no field copied), and ``bf16``
    resolved on this machine. Build with :meth:`from_params`, change with :meth:`replace`."""

    SECTION = "cross_encoder"
    train: Train
    bf16: bool

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown train.cross_encoder.loss '{self.loss}': use one of {list(LOSSES)}")
        if self.group_size < 2:
            raise ConfigError(
                f"train.cross_encoder.group_size must be >= 2 (a positive and at least one negative), got {self.group_size}"
            )
        if self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1, got {self.max_steps}")


class _Checkpoints:
    """Dev MRR@10 of the model being trained (reranking a first-stage run's top ``depth``), the best state kept."""

    def __init__(self, dataset: Any, params: Mapping[str, Any], candidates: Any, cfg: CrossEncoderConfig):
        self.dataset, self.cfg, self.qrels, self.candidates = dataset, cfg, None, candidates
        self.curve: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"mrr@10": -1.0, "step": 0, "state": None}
        self.seconds = 0.0
        dev_split = params["data"]["dev_split"]
        if candidates is not None and dev_split in dataset.qrels:
            self.qrels = dataset.split_qrels(dev_split)
            self.candidates = {q: candidates[q] for q in self.qrels if q in candidates}
            if not self.candidates:
                log.warning("dev candidates cover no %s query: no dev evaluation", dev_split)
                self.qrels = None

    def evaluate(self, model: Any, tok: Any, step: int, t_start: float) -> None:
        if self.qrels is None:
            return
        c, t = self.cfg, time.perf_counter()
        m = _dev_mrr(
            model, tok, self.dataset, self.candidates, self.qrels, c.eval_depth, c.max_length, c.bf16, 64
        )
        self.seconds += time.perf_counter() - t
        self.curve.append({"step": step, "mrr@10": m, "seconds": round(time.perf_counter() - t_start, 1)})
        log.info("step %d: dev MRR@10 (rerank top-%d) %.4f", step, c.eval_depth, m)
        if m >= self.best["mrr@10"]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best.update({"mrr@10": m, "step": step, "state": state})

    def restore_best(self, model: Any, step: int) -> None:
        if self.best["state"] is not None and self.best["step"] != step:
            log.info(
                "restoring the best dev checkpoint (step %d, MRR@10 %.4f)",
                self.best["step"],
                self.best["mrr@10"],
            )
            model.load_state_dict(self.best["state"])


def train_reranker(
    dataset: Any,
    negatives_rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    params: Mapping[str, Any],
    dev_candidates: Mapping[str, Mapping[str, float]] | None = None,
    *,
    negatives_file: str | os.PathLike | None = None,
    progress: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Fine-tune a CrossEncoder on query groups from ``negatives_rows``; returns ``out_dir``.

    ``params`` is the full params dict (``train`` + ``train.cross_encoder``, ``data.dev_split``); ``overrides``
    replaces fields of :class:`CrossEncoderConfig` (e.g. ``{"seed": 14, "max_steps": 60}``). ``dev_candidates`` is a
    first-stage run covering the dev queries; without it no dev evaluation is done and the final weights are saved.
    """
    from sentence_transformers import CrossEncoder

    from hardneg.models import resolve_model

    cfg = CrossEncoderConfig.from_params(params, **dict(overrides or {}))
    groups, gstats = build_groups(dataset, negatives_rows)
    if not groups:
        raise HardnegError(f"no usable training groups: all {gstats['rows']} negatives rows have no negative")
    apply_torch_threads({"train": {"torch_threads": cfg.torch_threads}})
    set_seed(cfg.seed)
    resolved = resolve_model(cfg.base_model)
    if resolved.backend != "torch":
        raise ConfigError(f"train.base_model must be a PyTorch model (got the ONNX model '{resolved.name}')")
    ce = CrossEncoder(resolved.path, num_labels=1, max_length=cfg.max_length, device="cpu")
    set_seed(
        cfg.seed
    )  # the data order and dropout do not depend on how many random numbers model loading used
    checkpoints = _Checkpoints(dataset, params, dev_candidates, cfg)
    run = _fit(ce, cfg, dataset, groups, checkpoints, progress)
    from hardneg.artifacts import staged_output

    with staged_output(out_dir, "hardneg train") as out:  # published (with checksums) when complete
        ce.save_pretrained(str(out))
        write_card(out, ModelCard.cross_encoder(cfg.max_length, cfg.base_model))
        _write_training_record(out, cfg, params, run, checkpoints, gstats, negatives_rows, negatives_file)
    return Path(out_dir)


def _fit(
    ce: Any, cfg: CrossEncoderConfig, dataset: Any, groups: list, checkpoints: _Checkpoints, progress: bool
) -> dict[str, Any]:
    """The training loop: ``cfg.max_steps`` steps (or until the time cap), dev checkpoints, best state restored."""
    import torch

    model, tok = ce.model, ce.tokenizer
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    horizon, budget_s = cfg.max_steps, cfg.time_cap_min * 60.0
    warmup = max(1, round(cfg.warmup_ratio * horizon))
    qtext = {q: dataset.queries[q].text for q, _, _ in groups}
    run: dict[str, Any] = {"loss_curve": [], "step_seconds": 0.0, "pairs": 0, "stopped_by": "max_steps"}
    t_start = run["t_start"] = time.perf_counter()
    if cfg.eval_at_start:
        checkpoints.evaluate(model, tok, 0, t_start)  # the untrained model's dev value
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=horizon, desc=f"train ({cfg.loss})", unit="step", dynamic_ncols=True)
    order: list[int] = []
    step = 0
    model.train()
    while step < horizon:
        if budget_s and time.perf_counter() - t_start >= budget_s:
            run["stopped_by"] = "time_cap"
            log.warning(
                "train.time_cap_min reached at step %d of %d (recorded as stopped_by: time_cap)",
                step,
                horizon,
            )
            break
        t0 = time.perf_counter()
        batch_q, batch_d = [], []
        for _ in range(cfg.queries_per_step):
            if not order:
                order = list(rng.permutation(len(groups)))
            q, p, negs = groups[int(order.pop())]
            for d in [p, *sample_negatives(negs, cfg.group_size - 1, rng)]:
                batch_q.append(qtext[q])
                batch_d.append(dataset.corpus[d].full_text)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, warmup, horizon)
        loss = _step(model, tok, opt, batch_q, batch_d, cfg)
        step += 1
        run["pairs"] += len(batch_q)
        run["loss_curve"].append(round(loss, 5))
        run["step_seconds"] += time.perf_counter() - t0
        if step % 20 == 0:
            mean = np.mean(run["loss_curve"][-20:])
            log.info("step %d/%d loss %.4f (%.1f s/step)", step, horizon, mean, run["step_seconds"] / step)
        if bar is not None:
            bar.update(1)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < horizon:
            checkpoints.evaluate(model, tok, step, t_start)
            model.train()
    if bar is not None:
        bar.close()
    if not checkpoints.curve or checkpoints.curve[-1]["step"] != step:
        checkpoints.evaluate(model, tok, step, t_start)
    checkpoints.restore_best(model, step)
    model.eval()
    return {**run, "steps": step, "horizon": horizon}


def _step(
    model: Any, tok: Any, opt: Any, batch_q: list[str], batch_d: list[str], cfg: CrossEncoderConfig
) -> float:
    """One optimiser step on ``queries_per_step`` groups of ``group_size`` (query, document) pairs; returns the loss."""
    import torch

    feats = tok(
        batch_q, batch_d, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        logits = model(**feats).logits
    loss = group_loss(logits.float().view(cfg.queries_per_step, cfg.group_size), cfg.loss, cfg.margin)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())


def _write_training_record(
    out: Path,
    cfg: CrossEncoderConfig,
    params: Mapping[str, Any],
    run: Mapping[str, Any],
    checkpoints: _Checkpoints,
    gstats: Mapping[str, Any],
    negatives_rows: Sequence[Mapping[str, Any]],
    negatives_file: str | os.PathLike | None,
) -> None:
    """``lineage.json`` (params hash of the resolved config, negatives sha256) + ``train_metrics.json``."""
    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage, sha256_file, write_lineage

    seconds = time.perf_counter() - run["t_start"]
    neg_sha = sha256_file(negatives_file) if negatives_file is not None else rows_fingerprint(negatives_rows)
    lin = current_lineage(None)
    lin.params_hash = params_hash({**dict(params), "train": cfg.flat()}, ["train"])
    write_lineage(out, lin.derive(negatives_sha256=neg_sha, base_model=cfg.base_model))
    step_s, best = run["step_seconds"], checkpoints.best
    metrics = {
        "loss": cfg.loss,
        "steps": run["steps"],
        "horizon": run["horizon"],
        "stopped_by": run["stopped_by"],
        "seconds": round(seconds, 1),
        "train_seconds": round(step_s, 1),
        "eval_seconds": round(checkpoints.seconds, 1),
        "pairs": run["pairs"],
        "pairs_per_s": round(run["pairs"] / step_s, 2) if step_s else None,
        "loss_curve": run["loss_curve"],
        "dev_curve": checkpoints.curve,
        "best_step": best["step"] if best["state"] is not None else run["steps"],
        "best_dev_mrr@10": best["mrr@10"] if best["state"] is not None else None,
        "groups": gstats,
        "config": cfg.flat(),
    }
    from hardneg.artifacts import atomic_write_json

    atomic_write_json(out / TRAIN_METRICS_FILE, metrics, sort_keys=True)
    log.info(
        "trained %d steps in %.0f s (%.1f pairs/s); saved %s",
        run["steps"],
        seconds,
        metrics["pairs_per_s"] or 0,
        out,
    )
