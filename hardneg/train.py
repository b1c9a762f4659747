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
(also at step 0 with ``eval_at_start``); the best checkpoint is kept in memory and saved. Output: the CrossEncoder folder + ``lineage.json`` +
``train_metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.errors import ConfigError, HardnegError
from hardneg.hw import apply_torch_threads, use_bf16

log = logging.getLogger(__name__)

LOSSES = ("listwise", "bce", "margin")
TRAIN_METRICS_FILE = "train_metrics.json"


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
    from hardneg.evaluate import combine, evaluate_run, rerank_scores, score_pairs, top_candidates

    cand = top_candidates(dev_run, depth)
    qtext = {q: dataset.queries[q].text for q in cand}
    dtext = {d: dataset.corpus[d].full_text for docs in cand.values() for d in docs}
    scores = rerank_scores(
        lambda pairs: score_pairs(model, tokenizer, pairs, max_length, batch_size, bf16), qtext, dtext, cand
    )
    return evaluate_run(combine(dev_run, scores, depth), dev_qrels, ("mrr@10",)).mean["mrr@10"]


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

    ``params`` is the full params dict (its ``train`` section, ``retrieve.rerank_depth`` for the dev evaluation and
    ``data.dev_split``); ``overrides`` replaces keys of the ``train`` section (e.g. ``{"seed": 14, "max_steps": 60}``).
    ``dev_candidates`` is a first-stage run covering the dev queries; without it no dev evaluation is done and the
    final weights are saved.
    """
    import torch
    from sentence_transformers import CrossEncoder

    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage, sha256_file, write_lineage
    from hardneg.models import resolve_model

    cfg = {**dict(params["train"]), **dict(overrides or {})}
    loss_name = str(cfg.get("loss", "listwise"))
    if loss_name not in LOSSES:
        raise ConfigError(f"unknown train.loss '{loss_name}': use one of {list(LOSSES)}")
    group_size = int(cfg.get("group_size", 8))
    if group_size < 2:
        raise ConfigError(
            f"train.group_size must be >= 2 (a positive and at least one negative), got {group_size}"
        )
    qps = int(cfg.get("queries_per_step", 4))
    lr = float(cfg.get("lr", 1e-4))
    max_length = int(cfg.get("max_length", 192))
    max_steps = int(cfg.get("max_steps", 100))
    # a safety net only: training length is max_steps (reproducible); the cap stops early and is recorded
    budget_s = float(cfg.get("time_cap_min") or 0) * 60.0
    eval_every = int(cfg.get("eval_every") or 0)
    eval_depth = int(cfg.get("eval_depth") or params.get("retrieve", {}).get("rerank_depth", 30))
    bf16 = use_bf16(cfg.get("bf16", "auto"))
    seed = int(cfg.get("seed", 13))
    margin = float(cfg.get("margin", 1.0))
    warmup_ratio = float(cfg.get("warmup_ratio", 0.1))
    if max_steps < 1:
        raise ConfigError(f"train.max_steps must be >= 1, got {max_steps}")

    groups, gstats = build_groups(dataset, negatives_rows)
    if not groups:
        raise HardnegError(f"no usable training groups: all {gstats['rows']} negatives rows have no negative")

    apply_torch_threads({"train": cfg})
    set_seed(seed)
    resolved = resolve_model(str(cfg["base_model"]))
    if resolved.backend != "torch":
        raise ConfigError(f"train.base_model must be a PyTorch model (got the ONNX model '{resolved.name}')")
    ce = CrossEncoder(resolved.path, num_labels=1, max_length=max_length, device="cpu")
    model, tok = ce.model, ce.tokenizer
    set_seed(seed)  # the data order and dropout do not depend on how many random numbers model loading used
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(cfg.get("weight_decay", 0.01)))

    dev_qrels = None
    dev_split = params.get("data", {}).get("dev_split", "dev")
    if dev_candidates is not None and dev_split in dataset.qrels:
        dev_qrels = dataset.split_qrels(dev_split)
        dev_candidates = {q: dev_candidates[q] for q in dev_qrels if q in dev_candidates}
        if not dev_candidates:
            log.warning("dev candidates cover no %s query: no dev evaluation", dev_split)
            dev_qrels = None

    horizon = max_steps
    warmup = max(1, round(warmup_ratio * horizon))
    qtext = {q: dataset.queries[q].text for q, _, _ in groups}

    loss_curve: list[float] = []
    dev_curve: list[dict[str, float]] = []
    best: dict[str, Any] = {"mrr@10": -1.0, "step": 0, "state": None}
    t_start = time.perf_counter()
    eval_seconds = 0.0
    step_seconds = 0.0
    step_times: list[float] = []
    pairs_seen = 0
    stopped_by = "max_steps"

    def run_eval(step: int) -> None:
        nonlocal eval_seconds
        if dev_qrels is None:
            return
        t = time.perf_counter()
        m = _dev_mrr(model, tok, dataset, dev_candidates, dev_qrels, eval_depth, max_length, bf16, 64)
        eval_seconds += time.perf_counter() - t
        dev_curve.append({"step": step, "mrr@10": m, "seconds": round(time.perf_counter() - t_start, 1)})
        log.info("step %d: dev MRR@10 (rerank top-%d) %.4f", step, eval_depth, m)
        if m >= best["mrr@10"]:
            best.update(
                {
                    "mrr@10": m,
                    "step": step,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
            )

    if cfg.get("eval_at_start"):
        run_eval(0)  # the untrained model's dev value (costs one evaluation of the budget)
    order: list[int] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=horizon, desc=f"train ({loss_name})", unit="step", dynamic_ncols=True)
    step = 0
    model.train()
    while step < horizon:
        if budget_s and time.perf_counter() - t_start >= budget_s:
            stopped_by = "time_cap"
            log.warning(
                "train.time_cap_min reached at step %d of %d (recorded as stopped_by: time_cap)",
                step,
                horizon,
            )
            break
        t0 = time.perf_counter()
        batch_q, batch_d = [], []
        for _ in range(qps):
            if not order:
                order = list(rng.permutation(len(groups)))
            q, p, negs = groups[int(order.pop())]
            for d in [p, *sample_negatives(negs, group_size - 1, rng)]:
                batch_q.append(qtext[q])
                batch_d.append(dataset.corpus[d].full_text)
        feats = tok(
            batch_q, batch_d, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, warmup, horizon)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**feats).logits
        loss = group_loss(logits.float().view(qps, group_size), loss_name, margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        pairs_seen += len(batch_q)
        loss_curve.append(round(float(loss.item()), 5))
        step_times.append(time.perf_counter() - t0)
        step_seconds += step_times[-1]
        if step % 20 == 0:
            log.info(
                "step %d/%d loss %.4f (%.1f s/step)",
                step,
                horizon,
                np.mean(loss_curve[-20:]),
                step_seconds / step,
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(loss_curve[-10:]):.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if eval_every and step % eval_every == 0 and step < horizon:
            run_eval(step)
            model.train()
    if bar is not None:
        bar.close()
    if not dev_curve or dev_curve[-1]["step"] != step:
        run_eval(step)
    if best["state"] is not None and best["step"] != step:
        log.info("restoring the best dev checkpoint (step %d, MRR@10 %.4f)", best["step"], best["mrr@10"])
        model.load_state_dict(best["state"])
    model.eval()

    from hardneg.artifacts import atomic_write_json, staged_output

    with staged_output(out_dir, "hardneg train") as out:  # published (with checksums) when complete
        ce.save_pretrained(str(out))
        seconds = time.perf_counter() - t_start
        neg_sha = (
            sha256_file(negatives_file) if negatives_file is not None else rows_fingerprint(negatives_rows)
        )
        lin = current_lineage(None)
        lin.params_hash = params_hash({**dict(params), "train": cfg}, ["train"])
        lin = lin.derive(negatives_sha256=neg_sha, base_model=str(cfg["base_model"]))
        write_lineage(out, lin)
        metrics = {
            "loss": loss_name,
            "steps": step,
            "horizon": horizon,
            "stopped_by": stopped_by,
            "seconds": round(seconds, 1),
            "train_seconds": round(step_seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
            "pairs": pairs_seen,
            "pairs_per_s": round(pairs_seen / step_seconds, 2) if step_seconds else None,
            "loss_curve": loss_curve,
            "dev_curve": dev_curve,
            "best_step": best["step"] if best["state"] is not None else step,
            "best_dev_mrr@10": best["mrr@10"] if best["state"] is not None else None,
            "groups": gstats,
            "config": cfg,
        }
        atomic_write_json(out / TRAIN_METRICS_FILE, metrics, sort_keys=True)
    log.info(
        "trained %d steps in %.0f s (%.1f pairs/s); saved %s",
        step,
        seconds,
        metrics["pairs_per_s"] or 0,
        out_dir,
    )
    return Path(out_dir)
