"""Bi-encoder reranker: fine-tune a pretrained embedding model on (query, positive, mined negatives).

Why a bi-encoder: no pretrained cross-encoder can be installed offline, and a cross-encoder started from embedding
weights does not learn relevance from a few hundred queries (0.28-0.32 MRR@10 on SciFact after 150 steps). A
pretrained embedding model already ranks well; fine-tuning it on the domain's labelled queries and mined hard negatives
moves a working ranker (the paper's generality study fine-tunes embedding models too).

Training (:func:`train_biencoder`), one step = ``queries_per_step`` training queries, each with one of its labelled
positives (uniform) and up to ``negatives_per_query`` of its mined negatives (uniform from its mined list). The loss is
softmax cross-entropy of ``scale * cos(q, d)`` over *every* document in the batch (its own positive is the target;
the other queries' positives and all mined negatives are negatives: "in-batch + mined"). A batch document that is a
labelled positive of the query (other than the target) is masked out: many queries share a positive (SciFact claims
cite the same abstract), and without the mask it would be trained as a negative. A query without mined negatives still
trains on the in-batch negatives (``drop_without_negative: false``); ``true`` drops it, as the paper's triplet setup
does. Reproducible: the data order comes from ``seed``, the length is ``max_steps`` (a wall-clock cap, ``time_cap_min``,
is only a safety net and is recorded as ``stopped_by: time_cap`` when it binds). bf16 autocast on CPU.

Only the ``train_split`` qrels are read (and the ``dev`` split for checkpoint selection when ``eval_every`` is set).

Output: a SentenceTransformer folder + its model card (``hardneg_model.json``, :mod:`hardneg.model_card`) +
``lineage.json`` + ``train_metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import TRAIN_METRICS_FILE
from hardneg.errors import ConfigError, HardnegError
from hardneg.hw import use_bf16
from hardneg.model_card import TUNE_MODES, ModelCard, write_card
from hardneg.settings import Train, TrainerView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiEncoderConfig(TrainerView):
    """What the bi-encoder trainer reads: the typed ``train`` section (its common keys and ``train.bi_encoder``, see
    params.yaml for each key) read flat (``cfg.lr``, ``cfg.max_steps``: :class:`hardneg.settings.TrainerView`, no
    field copied), and ``bf16`` resolved on this machine. Build with :meth:`from_params`, change with
    :meth:`replace`."""

    SECTION = "bi_encoder"
    train: Train
    bf16: bool

    def __post_init__(self) -> None:
        if self.tune not in TUNE_MODES:
            raise ConfigError(f"train.bi_encoder.tune must be one of {list(TUNE_MODES)}, got {self.tune!r}")
        if (
            self.pseudo_queries < 0
            or self.distill < 0
            or (self.epochs is not None and self.epochs <= 0)
            or not 0.0 < self.interpolate <= 1.0
        ):
            raise ConfigError(
                "train.bi_encoder: need pseudo_queries >= 0, distill >= 0, epochs > 0 or null and interpolate in "
                f"(0, 1] (got {self.pseudo_queries}, {self.distill}, {self.epochs}, {self.interpolate})"
            )
        if self.max_steps < 0 or self.queries_per_step < 2 or self.negatives_per_query < 0:
            raise ConfigError(
                "train: need max_steps >= 0 (0: the base model as it is), bi_encoder.queries_per_step >= 2 "
                "(in-batch negatives) and "
                f"negatives_per_query >= 0 (got {self.max_steps}, {self.queries_per_step}, {self.negatives_per_query})"
            )


# -------------------------------------------------------------------------------------------------- encoding


def load_biencoder(path: str | os.PathLike, max_length: int | None = None) -> Any:
    from sentence_transformers import SentenceTransformer

    from hardneg.models import resolve_model

    p = str(path)
    resolved_path = p if Path(p).is_dir() else resolve_model(p).path
    model = SentenceTransformer(str(resolved_path), device="cpu")
    if max_length:
        model.max_seq_length = int(max_length)
    return model


def _forward(model: Any, texts: Sequence[str]) -> Any:
    import torch.nn.functional as F

    prep = getattr(model, "preprocess", None) or model.tokenize  # ST >= 6 renamed tokenize to preprocess
    feats = prep(list(texts))
    return F.normalize(model(feats)["sentence_embedding"].float(), dim=-1)


def _dim(model: Any) -> int:
    f = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(f())


def encode(model: Any, texts: Sequence[str], batch_size: int = 64, bf16: bool | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings ``[len(texts), dim]`` (input order; batches of similar length)."""

    bf16 = use_bf16("auto") if bf16 is None else bf16
    if not texts:
        return np.zeros((0, _dim(model)), np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), _dim(model)), np.float32)
    from hardneg.scoring import inference

    with inference(model, bf16):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = _forward(model, [texts[i] for i in idx]).numpy()
    return out


class BiEncoderScorer:
    """Cosine scores of (query, document) pairs with a torch bi-encoder; each distinct text is encoded once per call
    and documents are kept in a cache (the corpus repeats across queries)."""

    def __init__(
        self, model: Any, max_length: int | None = None, batch_size: int = 64, bf16: bool | None = None
    ):
        self.model = model if not isinstance(model, (str, os.PathLike)) else load_biencoder(model, max_length)
        if max_length:
            self.model.max_seq_length = int(max_length)
        self.batch_size, self.bf16 = batch_size, bf16
        self._docs: dict[str, np.ndarray] = {}

    def preload(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Known document vectors (e.g. the base model's cached vectors for a ``tune: query`` model)."""
        for t, v in zip(texts, np.asarray(vectors, np.float32), strict=True):
            self._docs[t] = v

    def embed_docs(self, texts: Sequence[str]) -> None:
        new = sorted({t for t in texts if t not in self._docs})
        if new:
            for t, v in zip(new, encode(self.model, new, self.batch_size, self.bf16), strict=True):
                self._docs[t] = v

    def document_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors of ``texts`` (rows in order; cached ones, e.g. preloaded base vectors, are not re-embedded)."""
        self.embed_docs(texts)
        if not texts:
            return np.zeros((0, _dim(self.model)), np.float32)
        return np.stack([self._docs[t] for t in texts])

    def query_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """The tuned query tower's vectors of ``texts`` (rows in order)."""
        return encode(self.model, list(texts), self.batch_size, self.bf16)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, np.float32)
        self.embed_docs([d for _, d in pairs])
        qs = sorted({q for q, _ in pairs})
        qv = dict(zip(qs, encode(self.model, qs, self.batch_size, self.bf16), strict=True))
        return np.array([float(qv[q] @ self._docs[d]) for q, d in pairs], np.float32)


def freeze_lower_layers(model: Any, trainable_layers: int | None) -> int:
    """Freeze the token embeddings and all but the top ``trainable_layers`` transformer layers (BERT-style
    ``encoder.layer``); returns the number of trainable parameters. The backward pass then stops at the first trainable
    layer: on CPU, training the top 2 of 6 MiniLM layers costs about half a full step."""
    if trainable_layers is None:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    auto = getattr(model[0], "auto_model", None)
    layers = getattr(getattr(auto, "encoder", None), "layer", None)
    if auto is None or layers is None:
        raise ConfigError(
            "train.bi_encoder.trainable_layers needs a BERT-style model (encoder.layer); set it to null for this model"
        )
    n = len(layers)
    if not 1 <= trainable_layers <= n:
        raise ConfigError(
            f"train.bi_encoder.trainable_layers must be in [1, {n}] (or null), got {trainable_layers}"
        )
    for p in auto.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[n - trainable_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def document_vectors(
    dataset: Any,
    cfg: BiEncoderConfig,
    cache_dir: str | os.PathLike | None,
    progress: bool = False,
    stats: dict[str, Any] | None = None,
    cached_only: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """The base model's document vectors (``tune: query`` keeps them: documents are never re-embedded when the model
    changes). Through the fingerprinted embedding cache of ``hardneg embed``: free when the base model is one of
    ``embed.models`` with the same max_length. ``stats``: filled as :func:`hardneg.embed.embed_texts` does (rows
    encoded, precision, fingerprint...). ``cached_only``: raise :class:`hardneg.embed.NotCachedError` rather than
    embed what the cache lacks."""
    from hardneg.embed import embed_texts

    ids = list(dataset.corpus)
    texts = [dataset.corpus[d].full_text for d in ids]
    mcfg = {"name": cfg.base_model, "max_length": cfg.max_length, "batch_size": cfg.batch_size}
    vectors = embed_texts(
        texts, mcfg, cache_dir, "document", progress, bf16=cfg.bf16, stats=stats, cached_only=cached_only
    )
    return vectors, ids


# -------------------------------------------------------------------------------------------------- training


@dataclass
class TrainingSet:
    """Training queries with their labelled positives and mined negatives (ids)."""

    query_ids: list[str]
    positives: dict[str, list[str]]
    negatives: dict[str, list[str]]
    stats: dict[str, int]


def training_set(
    dataset: Any,
    rows: Sequence[Mapping[str, Any]] | None,
    train_split: str,
    drop_without_negative: bool = False,
) -> TrainingSet:
    """Positives from the ``train_split`` qrels only; negatives = the union of a query's mined ``negative_ids`` (first
    seen first), minus its positives. ``rows=None``: no mined negatives (in-batch only)."""
    qrels = dataset.split_qrels(train_split)
    positives = {q: sorted(d for d in docs if d in dataset.corpus) for q, docs in qrels.items()}
    negatives: dict[str, list[str]] = {q: [] for q in positives}
    foreign = 0
    for r in rows or ():
        q = str(r["query_id"])
        if q not in positives:
            foreign += 1
            continue
        for n in r["negative_ids"]:
            n = str(n)
            if n not in dataset.corpus:
                raise HardnegError(
                    f"negatives row for query '{q}' names document '{n}', which is not in the corpus"
                )
            if n not in negatives[q] and n not in qrels[q]:
                negatives[q].append(n)
    qids = sorted(q for q in positives if positives[q] and q in dataset.queries)
    with_neg = sum(1 for q in qids if negatives[q])
    if drop_without_negative:
        qids = [q for q in qids if negatives[q]]
    if not qids:
        raise HardnegError(
            f"no training query: split '{train_split}' has no query with a positive"
            + (
                " and a mined negative (train.bi_encoder.drop_without_negative is true)"
                if drop_without_negative
                else ""
            )
        )
    stats = {
        "train_queries": len(qrels),
        "queries_used": len(qids),
        "queries_with_negatives": with_neg,
        "rows_of_other_queries": foreign,
        "mined_negatives": sum(len(negatives[q]) for q in qids),
    }
    return TrainingSet(qids, positives, negatives, stats)


def batch_plan(
    ts: TrainingSet,
    queries_per_step: int,
    negatives_per_query: int,
    rng: np.random.Generator,
    order: list[int],
) -> tuple[list[str], list[str], list[int], list[list[int]]]:
    """One step's batch: ``(query_ids, doc_ids (unique), target index per query, masked doc indices per query)``."""
    qids: list[str] = []
    for _ in range(min(queries_per_step, len(ts.query_ids))):
        if not order:
            order.extend(int(i) for i in rng.permutation(len(ts.query_ids)))
        qids.append(ts.query_ids[order.pop()])
    docs: list[str] = []
    index: dict[str, int] = {}

    def add(d: str) -> int:
        if d not in index:
            index[d] = len(docs)
            docs.append(d)
        return index[d]

    targets = []
    for q in qids:
        pos = ts.positives[q]
        targets.append(add(pos[int(rng.integers(len(pos)))]))
        negs = ts.negatives[q]
        if negs and negatives_per_query:
            take = rng.choice(len(negs), size=min(negatives_per_query, len(negs)), replace=False)
            for i in sorted(int(x) for x in take):
                add(negs[i])
    return qids, docs, targets, positive_masks(qids, targets, index, ts.positives)


def positive_masks(
    qids: Sequence[str],
    targets: Sequence[int],
    index: Mapping[str, int],
    positives: Mapping[str, Sequence[str]],
) -> list[list[int]]:
    """Per query, the batch documents to mask: its labelled positives other than its target (never a negative)."""
    return [
        [index[d] for d in positives[q] if d in index and index[d] != t]
        for q, t in zip(qids, targets, strict=True)
    ]


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def pseudo_query_pool(
    dataset: Any, min_words: int = 4, max_words: int = 64, exclude: Iterable[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """Pseudo-queries for every document of the corpus but ``exclude`` (inverse cloze): its title and each of its
    sentences of ``min_words``..``max_words`` words. Documents that yield none are left out. Returns ``(doc_ids,
    texts per doc)``; no label is read, so unlabelled documents are trained on too."""
    ids: list[str] = []
    texts: list[list[str]] = []
    skip = set(exclude)
    for d in sorted(set(dataset.corpus) - skip):
        doc = dataset.corpus[d]
        cands = [t.strip() for t in [doc.title, *_SENTENCE.split(doc.text or "")] if t and t.strip()]
        cands = [t for t in cands if min_words <= len(t.split()) <= max_words]
        if cands:
            ids.append(d)
            texts.append(cands)
    return ids, texts


def add_pseudo_queries(
    plan: tuple[list[str], list[str], list[int], list[list[int]]],
    pool: tuple[list[str], list[list[str]]],
    n: int,
    rng: np.random.Generator,
    positives: Mapping[str, Sequence[str]],
) -> tuple[list[str], list[str], list[int], list[list[int]]]:
    """``plan`` (:func:`batch_plan`) with ``n`` pseudo-queries appended: query text (not an id), its document as the
    target (in-batch negatives only). A pseudo-query is marked by a ``"\0"`` prefix in the returned query list."""
    qids, docs, targets, masks = plan
    if n <= 0 or not pool[0]:
        return plan
    index = {d: i for i, d in enumerate(docs)}
    n_labelled = len(qids)
    for j in rng.choice(len(pool[0]), size=min(n, len(pool[0])), replace=False):
        d, cands = pool[0][int(j)], pool[1][int(j)]
        if d not in index:
            index[d] = len(docs)
            docs.append(d)
        qids.append("\0" + cands[int(rng.integers(len(cands)))])
        targets.append(index[d])
        masks.append([])
    # a pseudo-query's document may be a labelled positive of a labelled query: never its negative
    masks[:n_labelled] = positive_masks(qids[:n_labelled], targets[:n_labelled], index, positives)
    return qids, docs, targets, masks


def planned_steps(cfg: BiEncoderConfig, ts: TrainingSet) -> int:
    """``max_steps``, or with ``epochs`` set: ``ceil(epochs * training pairs / queries_per_step)`` (at least 1, at
    most ``max_steps``), so the budget follows the size of the training set."""
    if cfg.epochs is None:
        return cfg.max_steps
    pairs = sum(len(ts.positives[q]) for q in ts.query_ids)
    return int(min(cfg.max_steps, max(1, math.ceil(cfg.epochs * pairs / cfg.queries_per_step))))


def interpolate_weights(model: Any, base: Any, alpha: float) -> None:
    """WiSE-FT (Wortsman et al., CVPR 2022): replace ``model``'s floating-point weights by ``alpha * tuned + (1 -
    alpha) * base``, in place. Fine-tuning moves the model towards the labelled documents; stepping part of the way
    back keeps what the base model knew about the rest of the corpus."""
    import torch

    base_state = base.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name in base_state:
                tensor.copy_(alpha * tensor + (1.0 - alpha) * base_state[name].to(tensor.dtype))


def distill_loss(q: Any, q_base: Any, d: Any, scale: float) -> Any:
    """KL(base || tuned) of the softmax over the batch documents: keeps the tuned query tower's view of the batch
    close to the base model's (a regulariser against learning the training documents instead of relevance)."""
    import torch.nn.functional as F

    p_log = F.log_softmax(scale * (q_base.float() @ d.float().T), dim=-1)
    q_log = F.log_softmax(scale * (q.float() @ d.float().T), dim=-1)
    return F.kl_div(q_log, p_log, log_target=True, reduction="batchmean")


def contrastive_loss(
    q: Any, d: Any, targets: Sequence[int], masks: Sequence[Sequence[int]], scale: float
) -> Any:
    """Softmax cross-entropy of ``scale * q @ d.T`` (unit vectors) with the masked documents removed."""
    import torch
    import torch.nn.functional as F

    logits = scale * (q.float() @ d.float().T)
    for i, m in enumerate(masks):
        if m:
            logits[i, list(m)] = float("-inf")
    return F.cross_entropy(logits, torch.tensor(list(targets), dtype=torch.long))


def _lr_factor(step: int, warmup: int, horizon: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (horizon - step) / max(1, horizon - warmup))


# long: the training loop (setup, step, periodic evaluation, checkpoint, outputs) reads best as one piece
def train_biencoder(
    dataset: Any,
    negatives_rows: Sequence[Mapping[str, Any]] | None,
    out_dir: str | os.PathLike,
    cfg: BiEncoderConfig,
    *,
    train_split: str = "train",
    dev_eval: Callable[[Any], float] | None = None,
    lineage_extra: Mapping[str, Any] | None = None,
    params_for_hash: Mapping[str, Any] | None = None,
    doc_vectors: tuple[np.ndarray, Sequence[str]] | None = None,
    progress: bool = False,
    exclude_docs: Iterable[str] = (),
) -> Path:
    """Fine-tune ``cfg.base_model`` and save it to ``out_dir``; returns ``out_dir``.

    ``dev_eval(model) -> MRR@10`` (built by the caller from the dev split) is called every ``cfg.eval_every`` steps
    and at the end when ``eval_every`` > 0; the best checkpoint is kept. ``doc_vectors`` = ``(D, doc_ids)``, the
    base model's document vectors (:func:`document_vectors`), is required with ``tune: query``. ``exclude_docs``
    are never pseudo-query targets (the generalisation benchmark's held-out documents)."""
    import torch

    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage, write_lineage

    ts = training_set(dataset, negatives_rows, train_split, cfg.drop_without_negative)
    if cfg.tune == "query":
        if doc_vectors is None:
            raise HardnegError(
                "train.bi_encoder.tune: query needs the base model's document vectors (doc_vectors)"
            )
        Dfix = torch.from_numpy(np.ascontiguousarray(doc_vectors[0], dtype=np.float32))
        dindex = {d: i for i, d in enumerate(doc_vectors[1])}
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = load_biencoder(cfg.base_model, cfg.max_length)
    base = None
    if cfg.distill > 0:  # the frozen base model: the target of the distillation term
        base = load_biencoder(cfg.base_model, cfg.max_length)
        base.eval()
        for p in base.parameters():
            p.requires_grad_(False)
    pool = pseudo_query_pool(dataset, exclude=exclude_docs) if cfg.pseudo_queries > 0 else ([], [])
    n_pseudo = round(cfg.pseudo_queries * cfg.queries_per_step)
    max_steps = planned_steps(cfg, ts)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_trainable = freeze_lower_layers(model, cfg.trainable_layers)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    warmup = max(1, round(cfg.warmup_ratio * max_steps))
    qtext = {q: dataset.queries[q].text for q in ts.query_ids}
    order: list[int] = []
    loss_curve: list[float] = []
    dev_curve: list[dict[str, float]] = []
    best: dict[str, Any] = {"mrr@10": -1.0, "step": 0, "state": None}
    stopped_by = "max_steps"
    t0 = time.perf_counter()
    eval_s = 0.0

    def evaluate(step: int) -> None:
        nonlocal eval_s
        if dev_eval is None or not cfg.eval_every:
            return
        te = time.perf_counter()
        m = float(dev_eval(model))
        eval_s += time.perf_counter() - te
        dev_curve.append({"step": step, "mrr@10": round(m, 5)})
        log.info("step %d: dev MRR@10 %.4f", step, m)
        if m > best["mrr@10"]:
            best.update(
                {
                    "mrr@10": m,
                    "step": step,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
            )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc="train bi-encoder", unit="step", dynamic_ncols=True)
    step = 0
    model.train()
    while step < max_steps:
        if cfg.time_cap_min and time.perf_counter() - t0 >= cfg.time_cap_min * 60:
            stopped_by = "time_cap"
            log.warning(
                "train.time_cap_min (%.1f min) reached at step %d of %d",
                cfg.time_cap_min,
                step,
                max_steps,
            )
            break
        plan = batch_plan(ts, cfg.queries_per_step, cfg.negatives_per_query, rng, order)
        qids, docs, targets, masks = add_pseudo_queries(plan, pool, n_pseudo, rng, ts.positives)
        texts = [q[1:] if q.startswith("\0") else qtext[q] for q in qids]
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, warmup, max_steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            qv = _forward(model, texts)
            if cfg.tune == "query":  # fixed document vectors: only the query tower learns
                dv = Dfix[[dindex[d] for d in docs]]
            else:
                dv = _forward(model, [dataset.corpus[d].full_text for d in docs])
        loss = contrastive_loss(qv, dv, targets, masks, cfg.scale)
        if base is not None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                qb = _forward(base, texts)
            loss = loss + cfg.distill * distill_loss(qv, qb, dv.detach(), cfg.scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_curve.append(round(float(loss.item()), 5))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(loss_curve[-10:]):.3f}")
        elif step % 10 == 0:
            log.info(
                "step %d/%d loss %.4f (%.1f s/step)",
                step,
                max_steps,
                np.mean(loss_curve[-10:]),
                (time.perf_counter() - t0 - eval_s) / step,
            )
        if cfg.eval_every and step % cfg.eval_every == 0 and step < max_steps:
            evaluate(step)
            model.train()
    if bar is not None:
        bar.close()
    evaluate(step)
    if best["state"] is not None and best["step"] != step:
        log.info("restoring the best dev checkpoint (step %d, MRR@10 %.4f)", best["step"], best["mrr@10"])
        model.load_state_dict(best["state"])
    # WiSE-FT after the checkpoint choice (eval_every's dev numbers are of the tuned weights)
    if cfg.interpolate < 1.0 and step > 0:  # (0 steps: the base model itself, bit for bit)
        base_model = base if base is not None else load_biencoder(cfg.base_model, cfg.max_length)
        interpolate_weights(model, base_model, cfg.interpolate)
    model.eval()
    seconds = time.perf_counter() - t0
    from hardneg.artifacts import staged_output

    with staged_output(out_dir, "hardneg train") as out:  # published (with checksums) when complete
        model.save(str(out))
        # tune: query -> documents are embedded by the base model (the export ships it as a second graph)
        write_card(out, ModelCard.bi_encoder(cfg.max_length, cfg.base_model, cfg.tune))
        lin = current_lineage(None)
        if params_for_hash is not None:
            lin.params_hash = params_hash(dict(params_for_hash), ["train"])
        lin = lin.derive(base_model=cfg.base_model, **dict(lineage_extra or {}))
        write_lineage(out, lin)
        metrics = {
            "kind": "bi-encoder",
            "steps": step,
            "planned_steps": max_steps,
            "stopped_by": stopped_by,
            "seconds": round(seconds, 1),
            "train_seconds": round(seconds - eval_s, 1),
            "s_per_step": round((seconds - eval_s) / max(1, step), 3),
            "loss_curve": loss_curve,
            "dev_curve": dev_curve,
            "best_step": best["step"] if best["state"] is not None else step,
            "best_dev_mrr@10": best["mrr@10"] if best["state"] is not None else None,
            "training_set": ts.stats,
            "trainable_parameters": n_trainable,
            "config": cfg.flat(),
        }
        (out / TRAIN_METRICS_FILE).write_text(
            json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    log.info("trained %d steps in %.0f s; saved %s", step, seconds, out_dir)
    return Path(out_dir)
