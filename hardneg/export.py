"""ONNX export of a trained reranker folder (cross-encoder or bi-encoder), with an int8 variant and parity gates.

The folder's kind comes from its model card (``hardneg_model.json``, read by :func:`hardneg.model_card.read_card`;
a folder without one is refused). ``export_model(model_dir, out_dir, dev_set=...)`` writes::

    out_dir/model.onnx          fp32, opset 17, dynamic [batch, sequence] inputs (input_ids, attention_mask
                                [, token_type_ids]); outputs: cross-encoder score (sigmoid) + logits; bi-encoder
                                embedding [batch, dim] (mean pooling over the attention mask + L2 norm in the graph)
    out_dir/model.int8.onnx     onnxruntime dynamic int8 quantisation (quant_pre_process first when it works)
    out_dir/doc_model.onnx      bi-encoder trained with ``tune: query`` only: the document encoder (its base model,
    out_dir/doc_model.int8.onnx whose vectors the training kept fixed) as the same embedding graph, fp32 + int8;
    out_dir/doc_tokenizer.json  + doc_tokenizer_config.json only when its tokenizer differs from the query model's
    out_dir/tokenizer.json      + tokenizer_config.json (the served tokenizer; max_length lives in metadata.json)
    out_dir/corpus_vectors.npy  ``tune: query`` bi-encoder, params ``export.corpus_vectors``: the corpus's document
                                vectors (the base model's, from the embedding cache), fp16, keyed by the sha256 of the
                                text (:func:`hardneg.rerank.write_corpus_vectors`); the server's document cache at start
    out_dir/parity.json         the gates' numbers, written whether they pass or not
    out_dir/metadata.json       kind, score (sigmoid | cosine), model name, version, lineage, fusion weight, metrics,
                                max_length, sha256 of every other file; written only when every gate passes (no
                                metadata.json = not servable)

Nothing shipped names a path of the machine that built it: models are recorded by the name params gave them (a
folder given by its absolute path: by the folder's name) and their fingerprint (:func:`hardneg.lineage.sha256_dir`).

Gates (params ``export``): fp32 max |ONNX score - PyTorch score| over a sample of real pairs <=
``parity_fp32_max_abs`` (cross-encoder: CrossEncoder.predict; bi-encoder: the cosine of SentenceTransformer.encode
embeddings, query model for the query, document encoder for the document; each graph's embeddings are checked against
its torch model too); int8 MRR@10 drop vs fp32 on a dev set (candidates + qrels) <= ``parity_int8_max_mrr_drop`` (the int8 max
|diff| is reported). Both ONNX variants are scored through :mod:`hardneg.rerank`, the code the server runs (fused
with first-stage scores as served; a variant means both graphs of a two-graph bi-encoder). Then every runtime x
precision the server may choose (params ``serve.runtime``; ``auto``: onnxruntime fp32/int8, OpenVINO f32/int8 and,
where the exporting CPU has native bf16, OpenVINO bf16) is gated the same way and recorded in ``metadata.json``
``serving.candidates`` (:func:`_candidate_gate`; the server times those that passed, :mod:`hardneg.runtime_choice`).
Shipped corpus vectors are gated against the fp32 document graph (max L2 difference over the sample's documents <=
``export.corpus_vectors_max_l2``) and every MRR@10 gate then ranks the dev documents from them, as the server does
(the document graphs serve only documents outside them: their drift on the sample is recorded). Each sample text is
embedded once per graph and the fp32 side of the MRR@10 gates once (issue #18, item 5).
A failed gate raises :class:`GateFailedError`. torch is imported inside the functions that need it only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hardneg import hw
from hardneg.artifacts import FUSION_FILE, METADATA_FILE, METRICS_FILE
from hardneg.errors import GateFailedError, HardnegError
from hardneg.fusion import text_digest
from hardneg.lineage import LINEAGE_FILE, Lineage, current_lineage, read_lineage, sha256_dir, sha256_file
from hardneg.model_card import (
    BI_ENCODER,
    CARD_FILE,
    CROSS_ENCODER,
    KIND_SCORES,
    SELF_ENCODER,
    ModelCard,
    read_card,
)
from hardneg.rerank import (
    CORPUS_VECTORS_FILE,
    CORPUS_VECTORS_KEY,
    DOC_TOKENIZER_CONFIG_FILE,
    DOC_TOKENIZER_FILE,
    DOC_VARIANT_FILES,
    EMBEDDING_OUTPUT,
    ONNXRUNTIME,
    OPENVINO,
    PARITY_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VARIANT_FILES,
    CosineScorer,
    PairScorer,
    TextEncoder,
    read_corpus_vectors,
    write_corpus_vectors,
)
from hardneg.runtime_choice import AUTO, POLICIES, Candidate, cpu_skip_reason, export_candidates

log = logging.getLogger(__name__)

ONNX_OUTPUTS = ("score", "logits")
METADATA_FORMAT = 1

# Used for the fp32 parity sample when no dev set is given (short, long, truncated, odd characters).
_FALLBACK_PAIRS: list[tuple[str, str]] = [
    ("what is a cell", "Cells are the basic structural and functional unit of all living organisms."),
    (
        "does aspirin reduce heart attack risk",
        "In a randomised trial, low-dose aspirin lowered the rate of myocardial infarction.",
    ),
    ("a", "b"),
    (
        "vitamin D and bone density",
        "Vitamin D supplementation had no effect on bone mineral density in adults. " * 40,
    ),
    ("Ünïcödé tëxt?", "Ça marche: naïve café, 東京, emoji 🧬 and symbols ±≤≥."),
    (
        "gene expression in mice",
        "RNA-seq of murine liver showed 1,204 differentially expressed genes (FDR < 0.05).",
    ),
    ("", "an empty query still has to score"),
    ("long query " * 100, "short doc"),
]


@dataclass
class DevSet:
    """Candidates to rerank per query, their texts, and qrels ({qid: {doc_id: relevance}})."""

    queries: dict[str, str]
    docs: dict[str, str]
    candidates: dict[str, list[str]]
    qrels: dict[str, dict[str, int]]
    source: str = ""
    # first-stage scores aligned with ``candidates`` (from a run): with the model's fusion weight the int8 gate
    # compares the served (fused) ranking, as evaluation and serving compute it
    first_stage: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for qid, cands in self.candidates.items():
            if qid not in self.queries:
                raise HardnegError(f"dev set: query {qid} has candidates but no text")
            missing = [d for d in cands if d not in self.docs]
            if missing:
                raise HardnegError(f"dev set: query {qid}: candidate(s) without text: {missing[:3]}")

    @property
    def n_pairs(self) -> int:
        return sum(len(c) for c in self.candidates.values())

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.queries[q], self.docs[d]) for q, cands in self.candidates.items() for d in cands]

    @classmethod
    def from_beir(
        cls,
        root: str | os.PathLike,
        split: str = "dev",
        run: Mapping[str, Mapping[str, float]] | str | os.PathLike | None = None,
        depth: int = 30,
        max_queries: int | None = None,
        seed: int = 13,
    ) -> DevSet:
        """Dev candidates from a BEIR folder: the top ``depth`` of a first-stage ``run`` ({qid: {doc_id: score}} or
        a run.json path), or, without a run, each query's positives plus random documents up to ``depth`` (easier
        than real first-stage candidates; pass a run for a faithful gate)."""
        from hardneg.data import load_dataset

        return cls.from_dataset(load_dataset(root, splits=[split]), split, run, depth, max_queries, seed)

    @classmethod
    def from_dataset(
        cls,
        ds: Any,
        split: str = "dev",
        run: Mapping[str, Mapping[str, float]] | str | os.PathLike | None = None,
        depth: int = 30,
        max_queries: int | None = None,
        seed: int = 13,
    ) -> DevSet:
        """As :meth:`from_beir`, from a loaded dataset (e.g. with the dev split topped up from train)."""
        root = ds.root
        qrels = ds.split_qrels(split)
        if isinstance(run, str | os.PathLike):
            from hardneg.artifacts import read_run

            run = read_run(run)
        qids = sorted(q for q in qrels if q in ds.queries)
        rng = random.Random(seed)
        if max_queries is not None and len(qids) > max_queries:
            qids = sorted(rng.sample(qids, max_queries))
        all_docs = sorted(ds.corpus)
        candidates: dict[str, list[str]] = {}
        first_stage: dict[str, list[float]] = {}
        for qid in qids:
            if run is not None:
                ranked = sorted(run.get(qid, {}).items(), key=lambda kv: (-float(kv[1]), kv[0]))
                cands = [d for d, _ in ranked if d in ds.corpus][:depth]
            else:
                pos = [d for d in sorted(qrels[qid]) if d in ds.corpus][:depth]
                pool = [d for d in rng.sample(all_docs, min(len(all_docs), depth + len(pos))) if d not in pos]
                cands = pos + pool[: max(0, depth - len(pos))]
                rng.shuffle(cands)
            if cands:
                candidates[qid] = cands
                if run is not None:
                    first_stage[qid] = [float(run[qid][d]) for d in cands]
        if not candidates:
            raise HardnegError(f"{root}: no dev candidates for split '{split}' (empty run or qrels?)")
        used = {d for c in candidates.values() for d in c}
        return cls(
            queries={q: ds.queries[q].text for q in candidates},
            docs={d: ds.corpus[d].full_text for d in used},
            candidates=candidates,
            qrels={q: dict(qrels[q]) for q in candidates},
            first_stage=first_stage,
            source=f"{portable_name(root)}:{split}:{'run' if run is not None else 'positives+random'}:depth{depth}",
        )


def mrr_at_k(
    scores: Mapping[str, Sequence[float]],
    dev: DevSet,
    k: int = 10,
    fusion_weight: float | None = None,
    fusion: Mapping[str, Any] | None = None,
) -> float:
    """MRR@k of the dev candidates ranked by ``scores``, computed by :func:`hardneg.evaluate.evaluate_run` (ranx,
    like every other number of hardneg). With ``fusion_weight`` or ``fusion`` (the export's fusion: weight + gate +
    ``seen_documents_sha256``), and first-stage scores in ``dev``, the ranking is the served one:
    hardneg.fusion.fuse with :func:`hardneg.fusion.served_weight`."""
    from hardneg.evaluate import evaluate_run
    from hardneg.fusion import fuse, served_weight

    seen = frozenset((fusion or {}).get("seen_documents_sha256") or ())
    run: dict[str, dict[str, float]] = {}
    for qid, cands in dev.candidates.items():
        s = np.asarray(scores[qid], dtype=np.float64)
        w = fusion_weight
        if fusion is not None:
            w = served_weight(fusion, s, [dev.docs[d] for d in cands], seen)
        if w is not None and qid in dev.first_stage:
            s = fuse(s, dev.first_stage[qid], w)
        run[qid] = {d: float(x) for d, x in zip(cands, s, strict=True)}
    qrels = {q: dev.qrels.get(q, {}) for q in dev.candidates}
    if not any(v >= 1 for rel in qrels.values() for v in rel.values()):
        return 0.0
    return evaluate_run(run, qrels, (f"mrr@{k}",)).mean[f"mrr@{k}"]


def _ranking_label(w: float | None, gate: Mapping[str, Any] | None) -> str:
    if w is None:
        return "reranker scores"
    if not gate or gate.get("signal", "none") == "none":
        return f"served fusion (w={w})"
    return f"served fusion (gate {gate['signal']}: w={gate['weight_high']} / {gate['weight_low']})"


def _score_dev(scorer: PairScorer | CosineScorer, dev: DevSet) -> dict[str, np.ndarray]:
    return {q: scorer.score(dev.queries[q], [dev.docs[d] for d in c]) for q, c in dev.candidates.items()}


@dataclass
class ExportResult:
    out_dir: Path
    parity: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HardnegError(f"{path}: cannot read JSON ({e})") from None


def read_fusion_file(path: str | os.PathLike) -> dict[str, Any]:
    """The evaluate stage's ``fusion.json`` (``path``: the file or the evaluation folder) as JSON; a missing file is
    an error that names the command."""
    p = Path(path)
    p = p / FUSION_FILE if p.is_dir() else p
    if not p.is_file():
        raise HardnegError(
            f"{p}: no {FUSION_FILE} (the fusion the evaluate stage chose on dev): run `hardneg evaluate` and pass "
            "its output folder (--evaluation)"
        )
    fusion = _read_json(p)
    if not isinstance(fusion, dict):
        raise HardnegError(f'{p}: expected {{"weight": w in [0, 1], ...}}, got {fusion!r}')
    return fusion


def _read_fusion(path: Path, kind: str = CROSS_ENCODER) -> dict[str, Any]:
    """``fusion.json`` (:func:`read_fusion_file`: the file or its folder) checked against the export's ``kind``
    and normalised."""
    p = path / FUSION_FILE if path.is_dir() else path
    fusion = read_fusion_file(p)
    w = fusion.get("weight") if isinstance(fusion, dict) else None
    if not isinstance(w, int | float) or isinstance(w, bool) or not 0.0 <= float(w) <= 1.0:
        raise HardnegError(f'{p}: expected {{"weight": w in [0, 1], "first_stage": ...}}, got {fusion!r}')
    out = {"weight": float(w), "first_stage": fusion.get("first_stage")}
    score = fusion.get("score")
    if score is not None and (score == KIND_SCORES[BI_ENCODER]) != (kind == BI_ENCODER):
        served = "cosines" if kind == BI_ENCODER else "cross-encoder scores"
        raise HardnegError(f"{p}: the weight was tuned on '{score}' scores; a {kind} export serves {served}")
    gate = fusion.get("gate")
    if gate is not None:
        from hardneg.fusion import GATE_SIGNALS

        ok = isinstance(gate, dict) and gate.get("signal") in GATE_SIGNALS
        ws = [gate.get("weight_high"), gate.get("weight_low")] if ok else []
        if (
            ok and "margin" in gate["signal"]
        ):  # a margin gate without its threshold would let every query pass
            ok = isinstance(gate.get("threshold"), int | float) and not isinstance(
                gate.get("threshold"), bool
            )
        if not ok or not all(isinstance(x, int | float) and 0.0 <= float(x) <= 1.0 for x in ws):
            raise HardnegError(
                f"{p}: gate must be {{'signal', 'threshold', 'weight_high', 'weight_low'}}, got {gate!r}"
            )
        out["gate"] = dict(gate)
        seen = fusion.get("seen_documents_sha256") or []
        if "seen" in gate["signal"] and not seen:
            raise HardnegError(
                f"{p}: gate '{gate['signal']}' needs seen_documents_sha256 (rerun `hardneg evaluate`)"
            )
        out["seen_documents_sha256"] = list(seen)
    return out | {k: fusion[k] for k in ("depth", "score") if k in fusion}


SEEN_FILE = "seen_documents.txt"


def _ship_seen_documents(fusion: dict[str, Any] | None, staging: Path) -> dict[str, Any] | None:
    """The gate's training-positive hashes go to their own file (``seen_documents.txt``, one sha256 per line,
    checksummed with the rest); the metadata names the file and the count."""
    if not fusion or "seen_documents_sha256" not in fusion:
        return fusion
    fusion = dict(fusion)
    seen = fusion.pop("seen_documents_sha256")
    if seen:
        (staging / SEEN_FILE).write_text("".join(f"{h}\n" for h in seen), encoding="utf-8")
        fusion["seen_documents"] = {"file": SEEN_FILE, "count": len(seen)}
    return fusion


def portable_name(name: str | os.PathLike) -> str:
    """A model or data name as shipped artifacts record it: registry names, HF ids and relative folders as given,
    an absolute folder (a path of the machine that built it) by its last component (the fingerprint beside it says
    which model it was)."""
    p = Path(name).expanduser()
    return p.name if p.is_absolute() else str(name)


def _document_encoder_dir(src: Path, name: str) -> Path:
    """The local folder of a document encoder named in the model card: a folder (absolute, relative to the
    working directory, or to the model folder), a registry name (:func:`hardneg.models.resolve_model`), or a Hugging
    Face id already in the local cache."""
    from hardneg.errors import ModelNotFoundError
    from hardneg.models import resolve_model

    for cand in (Path(name).expanduser(), src / name):
        if cand.is_dir():
            return cand
    try:
        resolved = resolve_model(name)
    except ModelNotFoundError as e:
        raise HardnegError(f"{src / CARD_FILE}: document_encoder {name!r}: {e}") from None
    if resolved.backend == "torch" and Path(resolved.path).is_dir():
        return Path(resolved.path)
    if resolved.backend == "torch":  # an HF id: only if it is in the local cache (exports run offline)
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(resolved.path, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached / no hub library: reported below
            pass
    raise HardnegError(
        f"{src / CARD_FILE}: document_encoder {name!r} is not a local SentenceTransformer folder "
        f"(resolved to {resolved.path}, backend {resolved.backend}): the export ships it as the document graph"
    )


def _sample_pairs(dev: DevSet | None, n: int, seed: int = 13) -> list[tuple[str, str]]:
    if dev is None:
        return list(_FALLBACK_PAIRS)
    pairs = dev.pairs()
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


def _torch_scores(ce: Any, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The reference: CrossEncoder.predict (its own tokenizer, activation, batching)."""
    if not pairs:
        return np.empty(0, dtype=np.float32)
    return np.asarray(
        ce.predict(list(pairs), batch_size=32, show_progress_bar=False, convert_to_numpy=True),
        dtype=np.float32,
    )


def _torch_embeddings(st: Any, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised SentenceTransformer.encode embeddings (its tokenizer, pooling, batching), float64 [n, dim]."""
    emb = np.asarray(
        st.encode(list(texts), batch_size=32, show_progress_bar=False, convert_to_numpy=True),
        dtype=np.float64,
    )
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _torch_cosines(
    st: Any,
    pairs: Sequence[tuple[str, str]],
    doc_st: Any = None,
    embed: Callable[[Any, Sequence[str]], np.ndarray] = _torch_embeddings,
) -> np.ndarray:
    """The bi-encoder reference: cosine of SentenceTransformer.encode embeddings (``embed(model, texts)``); documents
    through ``doc_st`` when given (a ``tune: query`` bi-encoder's base model), else through ``st``."""
    if not pairs:
        return np.empty(0, dtype=np.float32)
    qt, dt = list(dict.fromkeys(p[0] for p in pairs)), list(dict.fromkeys(p[1] for p in pairs))
    qe, de = embed(st, qt), embed(st if doc_st is None else doc_st, dt)
    qrow, drow = {t: i for i, t in enumerate(qt)}, {t: i for i, t in enumerate(dt)}
    q, d = qe[[qrow[p[0]] for p in pairs]], de[[drow[p[1]] for p in pairs]]
    return np.einsum("ij,ij->i", q, d).astype(np.float32)


def _onnx_export(
    module: Any,
    sample: dict[str, Any],
    names: list[str],
    outputs: dict[str, dict[int, str]],
    path: Path,
    opset: int,
) -> None:
    """torch.onnx.export (TorchScript exporter) of ``module(*inputs named names)`` with dynamic batch/sequence axes."""
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | outputs
    with torch.inference_mode(), warnings.catch_warnings():
        # the legacy exporter is deprecated (dynamo=True needs onnxscript: docs/stack.md 3.3); tracer warnings are benign
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            module.eval(),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def _export_fp32(ce: Any, path: Path, opset: int) -> list[str]:
    """The cross-encoder graph, with the activation inside it. Returns the input names."""
    import torch

    hf = ce.model.eval()
    activation = ce.activation_fn if isinstance(ce.activation_fn, torch.nn.Module) else torch.nn.Sigmoid()
    sample = ce.preprocess([("what is a cell", "cells are the unit of life"), ("a", "b")])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class ScoreGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.activation = hf, activation

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(**dict(zip(names, inputs, strict=True))).logits
            return self.activation(logits).squeeze(-1), logits

    _onnx_export(ScoreGraph(), sample, names, {o: {0: "batch"} for o in ONNX_OUTPUTS}, path, opset)
    return names


def _export_bi_encoder_fp32(st: Any, path: Path, opset: int) -> list[str]:
    """The bi-encoder graph: transformer -> mean pooling over the attention mask -> L2 normalisation, output
    ``embedding`` [batch, dim]. Inputs: input_ids, attention_mask (+ token_type_ids when the model takes them)."""
    import inspect

    import torch

    hf = st[0].auto_model.eval()
    sample = st.preprocess(["what is a cell", "a"])
    accepted = inspect.signature(hf.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample and n in accepted]
    if "attention_mask" not in names:
        raise HardnegError(f"{type(hf).__name__} takes no attention_mask: cannot mean-pool in the graph")

    class EmbeddingGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            feats = dict(zip(names, inputs, strict=True))
            tokens = self.model(**feats).last_hidden_state
            mask = feats["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            # as sentence-transformers' Pooling("mean"): padding positions do not count
            mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=-1)

    _onnx_export(EmbeddingGraph(), sample, names, {EMBEDDING_OUTPUT: {0: "batch"}}, path, opset)
    return names


def _load_bi_encoder(src: Path, max_length: int | None) -> tuple[Any, int]:
    """The SentenceTransformer in ``src`` and the served max_length; refuses what the graph cannot reproduce."""
    from sentence_transformers import SentenceTransformer

    try:
        st = SentenceTransformer(str(src), device="cpu")
    except Exception as e:  # noqa: BLE001 - anything that fails to load is reported with the folder's name
        raise HardnegError(f"{src}: cannot load the bi-encoder as a SentenceTransformer ({e})") from None
    modules = [type(m).__name__ for m in st]
    if modules[:2] != ["Transformer", "Pooling"] or modules[2:] not in ([], ["Normalize"]):
        raise HardnegError(
            f"{src}: a bi-encoder export needs Transformer + Pooling(mean) [+ Normalize] modules, got {modules}"
        )
    mode = st[1].pooling_mode
    if mode != "mean":
        raise HardnegError(
            f"{src}: pooling mode {mode!r} is not supported: the exported graph mean-pools over the attention mask "
            "(train the bi-encoder with Pooling(pooling_mode='mean'))"
        )
    prompts = {k: v for k, v in (st.prompts or {}).items() if v}
    if prompts or st.default_prompt_name:
        raise HardnegError(f"{src}: prompts {prompts} are not supported: the server embeds the raw texts")
    max_length = int(max_length or st.max_seq_length or 0)
    limit = int(getattr(st[0].auto_model.config, "max_position_embeddings", max_length) or max_length)
    if not 4 <= max_length <= limit:
        raise HardnegError(f"{src}: max_length {max_length} must be in [4, {limit}] (the model's positions)")
    st.max_seq_length = max_length  # the reference truncates as the server will
    return st, max_length


@dataclass
class _Graph:
    """What a kind-specific exporter hands to the shared steps (stamping, int8, gates, metadata)."""

    max_length: int
    inputs: list[str]
    outputs: list[str]
    reference: Callable[[Sequence[tuple[str, str]]], np.ndarray]  # PyTorch scores of (query, doc) pairs
    # the served scoring code on the export folder's graphs of one variant:
    # scorer(folder, "fp32" | "int8"[, runtime[, precision]])
    scorer: Callable[..., PairScorer | CosineScorer]
    metadata: dict[str, Any]  # kind-specific metadata.json keys
    copies: dict[str, Path]  # file name in the export -> the source file (tokenizers)
    # role -> {variant: file}: one graph, or a bi-encoder's query and document graphs (quantised and stamped alike)
    graphs: dict[str, dict[str, str]] = field(default_factory=lambda: {"model": dict(VARIANT_FILES)})
    # bi-encoder: per graph, max |ONNX fp32 embedding - torch embedding| over the sample's texts (given the fp32
    # scorer that scored the sample: its document cache holds the sample's document embeddings)
    embedding_check: Callable[[Any, Sequence[tuple[str, str]]], dict[str, Any]] | None = None


def _cross_encoder_graph(src: Path, fp32_path: Path, opset: int, card: ModelCard) -> _Graph:
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(src), device="cpu")
    if ce.num_labels != 1:
        raise HardnegError(
            f"{src}: expected a 1-label CrossEncoder (a relevance score), got num_labels={ce.num_labels}"
        )
    max_length = int(ce.max_seq_length)
    inputs = _export_fp32(ce, fp32_path, opset)
    activation = type(ce.activation_fn).__name__.lower()
    return _Graph(
        max_length,
        inputs,
        list(ONNX_OUTPUTS),
        lambda pairs: _torch_scores(ce, pairs),
        lambda root, v, runtime=ONNXRUNTIME, precision=None: PairScorer(
            root / VARIANT_FILES[v], root / TOKENIZER_FILE, max_length, runtime=runtime, precision=precision
        ),
        {"kind": CROSS_ENCODER, "score": activation, "activation": activation, "truncation": "longest_first"},
        _tokenizer_copies(src, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE),
    )


def _tokenizer_copies(src: Path, name: str, config_name: str) -> dict[str, Path]:
    out = {name: src / TOKENIZER_FILE}
    if (src / TOKENIZER_CONFIG_FILE).exists():
        out[config_name] = src / TOKENIZER_CONFIG_FILE
    return out


def _same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two model folders tokenize alike (same tokenizer.json content and padding token)."""
    from tokenizers import Tokenizer

    from hardneg.rerank import _pad_token_id

    def load(d: Path) -> tuple[str, int]:
        tok = Tokenizer.from_file(str(d / TOKENIZER_FILE))
        cfg_path = d / TOKENIZER_CONFIG_FILE
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        return tok.to_str(), _pad_token_id(tok, cfg)

    return load(a) == load(b)


def _st_dim(st: Any) -> int:
    return int((getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)())


def _document_graph(
    src: Path, doc_name: str, max_length: int, dim: int, root: Path, opset: int, copies: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """A ``tune: query`` bi-encoder's document encoder exported as a second graph (same max_length); its tokenizer
    is shared with the query model's when identical, else copied beside it (``copies`` is updated). Returns the
    loaded SentenceTransformer and the ``document_graph`` metadata."""
    doc_dir = _document_encoder_dir(src, doc_name)
    _check_source(doc_dir, BI_ENCODER)
    doc_st, _ = _load_bi_encoder(doc_dir, max_length)
    if _st_dim(doc_st) != dim:
        raise HardnegError(
            f"{src}: the document encoder {doc_name!r} ({doc_dir}) embeds in {_st_dim(doc_st)} dimensions, "
            f"the query model in {dim}: their cosine is undefined"
        )
    _export_bi_encoder_fp32(doc_st, root / DOC_VARIANT_FILES["fp32"], opset)
    if _same_tokenizer(src, doc_dir):
        doc_tok, doc_cfg = (
            TOKENIZER_FILE,
            TOKENIZER_CONFIG_FILE if TOKENIZER_CONFIG_FILE in copies else None,
        )
    else:
        doc_copies = _tokenizer_copies(doc_dir, DOC_TOKENIZER_FILE, DOC_TOKENIZER_CONFIG_FILE)
        copies |= doc_copies
        doc_tok, doc_cfg = (
            DOC_TOKENIZER_FILE,
            DOC_TOKENIZER_CONFIG_FILE if DOC_TOKENIZER_CONFIG_FILE in doc_copies else None,
        )
    return doc_st, {
        "variants": dict(DOC_VARIANT_FILES),
        "tokenizer": doc_tok,
        "tokenizer_config": doc_cfg,
        "model": portable_name(doc_name),  # as the card names it (not the folder it resolved to here)
        "model_fingerprint": sha256_dir(doc_dir),
    }


class _TorchReference:
    """A bi-encoder's PyTorch reference on the parity sample: each torch model (``query``, ``document``: the same
    model unless ``tune: query``) encodes each text once, for the reference cosines and the embedding check."""

    def __init__(self, query: Any, document: Any, dim: int):
        self.models = {"query": query, "document": document}
        self.dim = dim
        self.memo: dict[int, dict[str, np.ndarray]] = {}

    def embeddings(self, model: Any, texts: Sequence[str]) -> np.ndarray:
        seen = self.memo.setdefault(id(model), {})
        todo = [t for t in dict.fromkeys(texts) if t not in seen]
        if todo:
            seen.update(zip(todo, _torch_embeddings(model, todo), strict=True))
        return np.stack([seen[t] for t in texts]) if texts else np.empty((0, self.dim))

    def cosines(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        q, d = self.models["query"], self.models["document"]
        return _torch_cosines(q, pairs, None if d is q else d, embed=self.embeddings)

    def embedding_check(self, fp32: CosineScorer, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Each fp32 graph's embeddings of the sample's texts vs its torch model's: the documents are read from the
        fp32 scorer's cache (embedded by its document graph when the sample was scored), the torch ones from the
        reference's."""
        out: dict[str, Any] = {}
        for role, texts in (("query", [p[0] for p in pairs]), ("document", [p[1] for p in pairs])):
            texts = list(dict.fromkeys(texts))
            if not texts:
                out[role] = {"texts": 0, "max_abs_diff": 0.0}
                continue
            onnx_emb = fp32.encoder.embed(texts) if role == "query" else fp32.embed_documents(texts)
            diff = np.abs(onnx_emb - self.embeddings(self.models[role], texts)).max()
            out[role] = {"texts": len(texts), "max_abs_diff": float(diff)}
        return out


def _bi_encoder_graph(src: Path, fp32_path: Path, opset: int, card: ModelCard) -> _Graph:
    """The query model's embedding graph, plus, for a ``tune: query`` bi-encoder, its document encoder's (the base
    model, whose vectors training kept fixed) as a second graph with the same code and max_length."""
    root = fp32_path.parent
    st, max_length = _load_bi_encoder(src, card.max_length)
    inputs = _export_bi_encoder_fp32(st, fp32_path, opset)
    dim = _st_dim(st)
    doc_name = str(card.document_encoder)
    copies = _tokenizer_copies(src, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)
    graphs = {"model": dict(VARIANT_FILES)}
    doc_st: Any = None
    doc_meta: dict[str, Any] | None = None
    if doc_name != SELF_ENCODER:
        doc_st, doc_meta = _document_graph(src, doc_name, max_length, dim, root, opset, copies)
        graphs = {"query": dict(VARIANT_FILES), "document": dict(DOC_VARIANT_FILES)}

    # the gates score as the server does: with a document-embedding cache (each dev document is embedded once per
    # variant, not once per query it is a candidate of: 200 dev queries x 30 candidates took ~10 min uncached)
    gate_cache = 1_000_000

    def scorer(
        root: Path, variant: str, runtime: str = ONNXRUNTIME, precision: str | None = None
    ) -> CosineScorer:
        kw = {"runtime": runtime, "precision": precision}
        query = TextEncoder(root / VARIANT_FILES[variant], root / TOKENIZER_FILE, max_length, **kw)
        if doc_meta is None:
            return CosineScorer(query, doc_cache_size=gate_cache)
        # as OnnxReranker loads it (a missing config file reads as {})
        doc = TextEncoder(
            root / DOC_VARIANT_FILES[variant],
            root / doc_meta["tokenizer"],
            max_length,
            tokenizer_config_path=root / (doc_meta["tokenizer_config"] or DOC_TOKENIZER_CONFIG_FILE),
            **kw,
        )
        return CosineScorer(query, doc_cache_size=gate_cache, doc_encoder=doc)

    torch_ref = _TorchReference(st, st if doc_st is None else doc_st, dim)
    return _Graph(
        max_length,
        inputs,
        [EMBEDDING_OUTPUT],
        torch_ref.cosines,
        scorer,
        {
            "kind": BI_ENCODER,
            "score": KIND_SCORES[BI_ENCODER],
            "truncation": "longest_first (query and document each)",
            "pooling": "mean",
            "normalize": "l2 (in the graph)",
            "embedding_dim": dim,
            "base_model": None if card.base_model is None else portable_name(card.base_model),
            "tune": card.tune,
            "document_encoder": portable_name(doc_name),
        }
        | ({"document_graph": doc_meta} if doc_meta is not None else {}),
        copies,
        graphs,
        torch_ref.embedding_check,
    )


# MatMul only (embedding Gathers stay fp32) with per-channel weight scales: on a trained MiniLM reranker (SciFact
# dev, 81 queries x 30 candidates, served fused ranking) this cut the int8 MRR@10 drop from 0.0142 (onnxruntime's
# defaults) to 0.0002, and scored faster; benchmarks/quantization.py, results/quantization.json.
# reduce_range: 7-bit weights (|w| <= 64). Dynamic quantisation computes uint8 activations x int8 weights; on x86
# CPUs without VNNI (AVX2-only, e.g. our AMD EPYC CI runners) onnxruntime's U8S8 kernel adds pairs of products in
# int16 (vpmaddubsw), which saturates when |a1*w1 + a2*w2| > 32767: 255 * 127 * 2 = 64770 can, 255 * 64 * 2 = 32640
# cannot. Measured on such a CPU (a lone MatMulInteger, uint8 200..255 x int8 weights vs exact int32): max error
# 67695 with [-127, 127] weights, 0 with [-64, 64]. Per-channel scales make it worse (every column reaches +-127).
# Tiny test cross-encoder, fp32 vs int8 over 856 pairs: Pearson 0.868 / Spearman 0.807 without reduce_range,
# 0.9994 / 0.964 with it. Pretrained all-MiniLM-L6-v2 bi-encoder (SciFact dev, 81 queries x BM25 top-30, same CPU):
# MRR@10 fp32 0.6151, int8 0.6148 without / 0.6201 with reduce_range; fp32/int8 cosine Pearson 0.99688 / 0.99697,
# mean |diff| 0.0103 / 0.0100 (a real model's activations rarely saturate; the tiny one's do). VNNI/AMX CPUs
# accumulate in int32 and lose only the 8th weight bit. The graph must be right on every x86 CPU that serves it, so
# the export always reduces the range.
INT8_OPTIONS: dict[str, Any] = {"op_types_to_quantize": ["MatMul"], "per_channel": True, "reduce_range": True}


def _quantize_int8(src: Path, dst: Path) -> str:
    """Dynamic int8 (weights QInt8, :data:`INT8_OPTIONS`). Returns how pre-processing went (it needs full symbolic shape inference, which
    BERT graphs exported by TorchScript often do not pass; then we retry without the symbolic pass, then skip it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = (dst.parent / (dst.stem + ".pre.onnx")).resolve()
    status = "skipped"
    with (
        _quiet_root_logger(),
        tempfile.TemporaryDirectory(prefix="hardneg-quant-") as tmp,
        contextlib.chdir(tmp),
    ):
        # chdir: a failed symbolic shape inference dumps sym_shape_infer_temp.onnx + *.data into the working dir
        for kwargs, label in (
            ({}, "full"),
            ({"skip_symbolic_shape": True}, "without symbolic shape inference"),
        ):
            try:
                quant_pre_process(str(src.resolve()), str(pre), **kwargs)
                status = f"ok ({label})"
                break
            except Exception as e:  # noqa: BLE001 - onnxruntime raises bare Exception here; we fall back and record it
                log.info("quant_pre_process (%s) failed: %s", label, e)
                status = f"failed ({label}: {e})"
                pre.unlink(missing_ok=True)
        quantize_dynamic(
            str(pre if pre.exists() else src.resolve()),
            str(dst.resolve()),
            weight_type=QuantType.QInt8,
            **INT8_OPTIONS,
        )
    pre.unlink(missing_ok=True)
    return status


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO line per tensor on the root logger: keep the CLI readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _stamp_onnx(path: Path, props: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(path))
    existing = {p.key: p for p in m.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            entry = m.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.save(m, str(path))


# A drop of exactly the threshold passes: sums of reciprocal ranks are not exact in floating point (SciFact's int8
# drop over 100 dev queries, reciprocal ranks summing 0.5 lower, read 0.0050000000000000044 against the 0.005
# threshold and failed the int8 gate).
_MRR_EPS = 1e-9


class _Clock:
    """Seconds per named phase (``with clock("name"): ...``), rounded: parity.json ``timings``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 2)


@dataclass
class CorpusVectors:
    """A ``tune: query`` bi-encoder's corpus document vectors to ship (params ``export.corpus_vectors``): the texts
    as the server will see them (``Document.full_text``), their float vectors [n, dim] (the base model's, from the
    embed stage's cache: :func:`hardneg.biencoder.document_vectors`) and where they came from."""

    texts: list[str]
    vectors: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Shipped:
    """The corpus vectors as written into the export (read back from the file: the gates see what the server
    loads): distinct keys, their texts and fp16 vectors."""

    keys: list[bytes]
    texts: list[str]
    vectors: np.ndarray

    def served(self, scorer: CosineScorer) -> CosineScorer:
        """``scorer``'s graphs with the shipped vectors in the document cache, as the server starts: corpus
        documents are cache hits (their vectors never come from the document graph), others go through it."""
        out = CosineScorer(scorer.encoder, max(len(self.keys), scorer.cache.capacity), scorer.doc_encoder)
        out.cache.preload(self.keys, self.vectors)
        return out


def corpus_vectors_decision(
    policy: str | bool, card: ModelCard, n_docs: int, cache_size: int
) -> tuple[bool, str]:
    """Whether the export ships the corpus's document vectors (params ``export.corpus_vectors``: ``auto`` | true |
    false), and why. Only a ``tune: query`` bi-encoder keeps fixed document vectors (its base model's, which the
    embed stage computed); ``auto`` ships them when the corpus fits the server's document cache
    (``serve.doc_cache_size``: vectors beyond it would not be loaded). ``true`` on another model is an error."""
    if policy is False:
        return False, "export.corpus_vectors: false"
    if not card.separate_document_encoder:
        why = (
            f"a {card.kind}"
            + (f" (tune: {card.tune})" if card.tune else "")
            + " has no fixed document vectors (only a tune: query bi-encoder keeps its base model's)"
        )
        if policy is True:
            raise HardnegError(f"export.corpus_vectors: true, but {why}")
        return False, why
    if policy == "auto" and n_docs > cache_size:
        return False, (
            f"auto: the corpus ({n_docs} documents) does not fit serve.doc_cache_size ({cache_size}); "
            "export.corpus_vectors: true ships them anyway (the server loads as many as its cache holds)"
        )
    return (
        True,
        f"export.corpus_vectors: {str(policy).lower()} ({n_docs} documents, doc_cache_size {cache_size})",
    )


def _ship_corpus_vectors(corpus: CorpusVectors, staging: Path, dim: int) -> tuple[_Shipped, dict[str, Any]]:
    """Write ``corpus_vectors.npy`` (:func:`hardneg.rerank.write_corpus_vectors`) and read it back; returns what the
    gates use and the ``metadata.json`` ``corpus_vectors`` entry."""
    vectors = np.asarray(corpus.vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise HardnegError(
            f"corpus vectors of shape {vectors.shape}: the document graph embeds in {dim} dimensions"
        )
    path = staging / CORPUS_VECTORS_FILE
    stats = write_corpus_vectors(path, corpus.texts, vectors)
    keys, stored, _ = read_corpus_vectors(path, dim=dim)
    first: dict[bytes, str] = {}
    for t in corpus.texts:
        first.setdefault(text_digest(t), t)
    meta = {
        "file": CORPUS_VECTORS_FILE,
        "count": stats["count"],
        "dim": dim,
        "dtype": "float16",
        "key": CORPUS_VECTORS_KEY,
        "duplicate_texts": stats["duplicates"],
        "bytes": path.stat().st_size,
        "source": dict(corpus.source),
    }
    return _Shipped(keys, [first[k] for k in keys], stored), meta


def _corpus_vectors_gate(
    fp32: CosineScorer,
    shipped: _Shipped,
    meta: dict[str, Any],
    pairs: Sequence[tuple[str, str]],
    max_l2: float,
    fallback_docs: int = 64,
) -> dict[str, Any]:
    """The shipped vectors against the fp32 document graph (the served graph whose embeddings the fp32 gate tied to
    PyTorch within its threshold) on a sample of corpus documents: the parity sample's documents (already embedded
    by the fp32 gate: read from its cache), else (no dev set) a seeded sample of ``fallback_docs`` shipped ones.
    Gate: max ||shipped - graph||_2 <= ``max_l2``: that norm is the largest change of cosine any unit-length query
    can see (Cauchy-Schwarz), so every served score of these documents is within it. Also recorded: the largest
    component difference and the actual cosine change of the sample pairs (fp32 query graph)."""
    row = {k: i for i, k in enumerate(shipped.keys)}
    docs = [d for d in dict.fromkeys(p[1] for p in pairs) if text_digest(d) in row]
    sample = "the parity sample's documents"
    if not docs:
        rng = random.Random(13)
        idx = sorted(rng.sample(range(len(shipped.keys)), min(fallback_docs, len(shipped.keys))))
        docs, sample = (
            [shipped.texts[i] for i in idx],
            f"{len(idx)} shipped documents (seeded: no dev sample)",
        )
    graph = fp32.embed_documents(docs).astype(np.float64)
    ship = shipped.vectors[[row[text_digest(d)] for d in docs]].astype(np.float64)
    l2 = np.linalg.norm(ship - graph, axis=1) if docs else np.zeros(1)
    in_corpus = [p for p in pairs if text_digest(p[1]) in row]
    cos_diff = 0.0
    if in_corpus:
        qs = {t: i for i, t in enumerate(dict.fromkeys(p[0] for p in in_corpus))}
        qe = fp32.encoder.embed(list(qs)).astype(np.float64)
        q = qe[[qs[p[0]] for p in in_corpus]]
        d_ship = shipped.vectors[[row[text_digest(p[1])] for p in in_corpus]].astype(np.float64)
        d_graph = fp32.embed_documents([p[1] for p in in_corpus]).astype(np.float64)
        cos_diff = float(np.abs(np.einsum("ij,ij->i", q, d_ship - d_graph)).max())
    return {
        "shipped": True,
        **{k: meta[k] for k in ("file", "count", "dim", "dtype", "bytes", "source")},
        "against": "fp32 document graph",
        "sample": sample,
        "documents": len(docs),
        "max_l2_diff": float(l2.max()),
        "mean_l2_diff": float(l2.mean()),
        "max_abs_component_diff": float(np.abs(ship - graph).max()) if docs else 0.0,
        "pairs": len(in_corpus),
        "max_abs_cosine_diff": cos_diff,
        "threshold_l2": max_l2,
        "passed": bool(l2.max() <= max_l2),
    }


@dataclass
class _DevReference:
    """The fp32 side of every MRR@10 gate, scored once: the fp32 graphs' dev scores (with shipped corpus vectors:
    the fp32 query graph x the shipped vectors, as served) and their MRR@10 as served (fused when first-stage
    scores exist)."""

    mrr: float
    fusion: dict[str, Any] | None
    ranking: str
    documents: str

    @classmethod
    def of(cls, fp32: Any, dev_set: DevSet, fusion: dict[str, Any] | None, shipped: bool) -> _DevReference:
        w = fusion["weight"] if fusion is not None and dev_set.first_stage else None
        f = fusion if w is not None else None
        documents = "shipped corpus vectors (served from the document cache)" if shipped else "document graph"
        return cls(
            mrr_at_k(_score_dev(fp32, dev_set), dev_set, fusion=f),
            f,
            _ranking_label(w, (fusion or {}).get("gate")),
            documents,
        )


def _int8_gate(ref: _DevReference, int8: Any, dev_set: DevSet, threshold: float) -> dict[str, Any]:
    """MRR@10 of the candidate (``int8``: any scorer) on the dev candidates vs the fp32 reference, ranked as served
    (fused when first-stage scores exist; corpus documents from the shipped vectors when there are some)."""
    mrr8 = mrr_at_k(_score_dev(int8, dev_set), dev_set, fusion=ref.fusion)
    drop = ref.mrr - mrr8
    return {
        "ranking": ref.ranking,
        "documents": ref.documents,
        "mrr@10_fp32": ref.mrr,
        "mrr@10_int8": mrr8,
        "mrr@10_drop": drop,
        "mrr@10_abs_diff": abs(drop),
        "threshold_mrr_drop": threshold,
        "dev": {"source": dev_set.source, "queries": len(dev_set.candidates), "pairs": dev_set.n_pairs},
        "passed": mrr_drop_passes(drop, threshold),
    }


def mrr_drop_passes(drop: float, threshold: float) -> bool:
    """The MRR@10 gates' test, ``drop <= threshold``, where a drop equal to the threshold up to floating-point
    rounding of the reciprocal-rank sums passes."""
    return bool(drop <= threshold + _MRR_EPS)


def _candidate_gate(
    graph: _Graph,
    staging: Path,
    c: Candidate,
    parity: dict[str, Any],
    pairs: Sequence[tuple[str, str]],
    ref: np.ndarray,
    of_pairs: int,
    dev_ref: _DevReference | None,
    dev_set: DevSet | None,
    shipped: _Shipped | None,
    fp32_max_abs: float,
    int8_max_mrr_drop: float,
) -> dict[str, Any]:
    """The parity gate of one runtime x precision the server may serve (:func:`hardneg.runtime_choice.
    export_candidates`), through the served code. onnxruntime runs exactly what the fp32 / int8 gates above measured;
    OpenVINO (the same .onnx files, its own kernels) is scored again on ``pairs`` (the first params
    ``export.parity_candidate_pairs`` of the ``of_pairs`` sample pairs: recorded) against PyTorch through both of its
    graphs (the cache-miss path):
    f32 max |diff| <= the fp32 threshold; int8 and bf16 (8 mantissa bits: a ranking gate, as for int8) their MRR@10
    drop vs the fp32 reference on the dev set <= the int8 threshold, ranked as served (with shipped corpus vectors,
    the dev documents are cache hits: the candidate's query graph x the shipped vectors; the sample's max / mean
    |diff| then records its document graph, which serves only documents outside them). bf16 is gated only where the
    exporting CPU has native bf16 (elsewhere OpenVINO's bf16 hint runs f32, so the gate would measure f32): skipped
    with the reason. The int8 graph is gated on OpenVINO only when it passed its own gate (the server never loads a
    failed int8). Recorded in metadata.json ``serving.candidates``."""
    out: dict[str, Any] = {"runtime": c.runtime, "variant": c.variant, "precision": c.precision}
    if c.runtime == ONNXRUNTIME:
        return out | {"same_as": f"{c.variant} gate above", "passed": bool(parity[c.variant]["passed"])}
    if c.variant == "int8" and not parity["int8"]["passed"]:
        return out | {"skipped": "the int8 graph failed its own gate (int8 above)", "passed": False}
    why = cpu_skip_reason(c, hw.cpu_info())
    if why is not None:
        return out | {"skipped": f"exporting machine: {why}", "passed": False}
    scorer = graph.scorer(staging, c.variant, c.runtime, c.precision)
    scores = scorer.score_pairs([p[0] for p in pairs], [p[1] for p in pairs])
    diff = np.abs(scores - ref) if len(ref) else np.zeros(1)
    out |= {
        "pairs": len(pairs),
        "of_sample_pairs": of_pairs,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }
    if c.precision == "fp32":
        return out | {"threshold": fp32_max_abs, "passed": bool(out["max_abs_diff"] <= fp32_max_abs)}
    if dev_set is None or dev_ref is None:
        return out | {"passed": True, "skipped": "no dev set given: MRR@10 gate not evaluated"}
    gate = _int8_gate(dev_ref, shipped.served(scorer) if shipped else scorer, dev_set, int8_max_mrr_drop)
    return out | {
        "mrr@10_drop": gate["mrr@10_drop"],
        "threshold_mrr_drop": int8_max_mrr_drop,
        "documents": gate["documents"],
        "passed": gate["passed"],
    }


def _serving_gates(
    graph: _Graph,
    staging: Path,
    parity: dict[str, Any],
    serve_runtime: str,
    serve_variant: str,
    served: str,
    *gate_args: Any,
) -> dict[str, Any]:
    """metadata.json ``serving``: the default candidate's gate at the top (``runtime``, ``variant``, ``precision``,
    ``passed``: it blocks the export; under ``auto`` the default is onnxruntime at the served variant), ``policy``
    (params ``serve.runtime``), ``candidates`` (every runtime x precision the server may choose, gated; under
    ``auto`` both variants when ``serve.variant`` is auto) and the exporting machine's ``cpu``."""
    variants = [served] if serve_runtime != AUTO or serve_variant != "auto" else list(VARIANT_FILES)
    default = Candidate(ONNXRUNTIME if serve_runtime == AUTO else serve_runtime, served, served)
    gates = {}
    for c in export_candidates(serve_runtime, variants):
        t = time.perf_counter()
        gates[c.key] = _candidate_gate(graph, staging, c, parity, *gate_args)
        if "same_as" not in gates[c.key] and "skipped" not in gates[c.key]:
            gates[c.key]["seconds"] = round(time.perf_counter() - t, 2)
    for key, g in gates.items():
        if not g["passed"] and key != default.key:
            log.info(
                "serving candidate %s not servable: %s", key, g.get("skipped") or "failed its parity gate"
            )
    return {**gates[default.key], "policy": serve_runtime, "candidates": gates, "cpu": hw.cpu_info()}


def _sample_gates(
    graph: _Graph,
    fp32: Any,
    int8: Any,
    pairs: Sequence[tuple[str, str]],
    clock: _Clock,
    fp32_max_abs: float,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The fp32 gate on the sample pairs (both variants' scores vs PyTorch; a bi-encoder's graphs' embeddings too)
    and the int8 max |diff|. Returns parity.json's ``sample`` / ``fp32`` / ``int8`` start, the reference scores and
    the int8 scores."""
    qs, ds = [p[0] for p in pairs], [p[1] for p in pairs]
    with clock("torch_reference"):
        ref = graph.reference(pairs)
    with clock("fp32_sample"):
        s32 = fp32.score_pairs(qs, ds)
    with clock("int8_sample"):
        s8 = int8.score_pairs(qs, ds)
    fp32_diff = float(np.abs(s32 - ref).max()) if len(ref) else 0.0
    parity: dict[str, Any] = {
        "sample": {"pairs": len(pairs), "queries": len(set(qs)), "documents": len(set(ds))},
        "fp32": {
            "score": graph.metadata["score"],
            "max_abs_diff": fp32_diff,
            "mean_abs_diff": float(np.abs(s32 - ref).mean()) if len(ref) else 0.0,
            "threshold": fp32_max_abs,
            "passed": fp32_diff <= fp32_max_abs,
        },
        "int8": {"max_abs_diff": float(np.abs(s8 - ref).max()) if len(ref) else 0.0},
    }
    if graph.embedding_check is not None:  # each graph against its own torch model, not only their cosine
        with clock("embedding_check"):
            emb = graph.embedding_check(fp32, pairs)
        parity["fp32"]["embeddings"] = emb
        parity["fp32"]["passed"] = bool(
            parity["fp32"]["passed"] and all(e["max_abs_diff"] <= fp32_max_abs for e in emb.values())
        )
    return parity, ref, s8


def _dev_int8_gate(
    parity: dict[str, Any],
    fp32: Any,
    int8: Any,
    dev_set: DevSet | None,
    fusion: dict[str, Any] | None,
    corpus: _Shipped | None,
    sample_diff: np.ndarray,
    threshold: float,
) -> _DevReference | None:
    """The int8 MRR@10 gate into ``parity["int8"]`` (ranked as served: with shipped corpus vectors the dev documents
    come from them, and the int8 document graph's drift on the sample, ``sample_diff`` = int8 - PyTorch, is recorded
    as ``int8.document_graph``). Returns the fp32 reference the other MRR@10 gates reuse (``None``: no dev set)."""
    int8_diff = parity["int8"]["max_abs_diff"]
    if dev_set is None:
        log.warning(
            "no dev set given: the int8 MRR@10 gate is skipped (max |diff| %.2e reported only)", int8_diff
        )
        parity["int8"] |= {"passed": True, "skipped": "no dev set given: MRR@10 gate not evaluated"}
        return None
    dev_ref = _DevReference.of(corpus.served(fp32) if corpus else fp32, dev_set, fusion, corpus is not None)
    parity["int8"] |= _int8_gate(dev_ref, corpus.served(int8) if corpus else int8, dev_set, threshold)
    if corpus is not None:  # the int8 document graph now serves only documents outside the shipped ones
        parity["int8"]["document_graph"] = {
            "pairs": len(sample_diff),
            "max_abs_diff": int8_diff,
            "mean_abs_diff": float(np.abs(sample_diff).mean()) if len(sample_diff) else 0.0,
            "note": "the sample pairs through both int8 graphs (the cache-miss path: documents outside the "
            "shipped corpus vectors) vs PyTorch; the MRR@10 gate above ranks the dev documents as served, "
            "from the shipped vectors",
        }
    return dev_ref


def _run_gates(
    graph: _Graph,
    staging: Path,
    dev_set: DevSet | None,
    fusion: dict[str, Any] | None,
    *,
    sample_pairs: int,
    candidate_pairs: int = 64,
    fp32_max_abs: float,
    int8_max_mrr_drop: float,
    serve_variant: str,
    serve_runtime: str = AUTO,
    shipped: tuple[_Shipped, dict[str, Any]] | None = None,
    corpus_vectors_max_l2: float = 0.02,
) -> dict[str, Any]:
    """Both ONNX variants through hardneg.rerank (the served code path) vs the PyTorch reference, the shipped corpus
    vectors vs the fp32 document graph, then every runtime x precision the server may serve
    (:func:`_serving_gates`); parity.json. Every document of the sample is embedded once per graph; the fp32 side
    of the MRR@10 gates is scored once."""
    clock = _Clock()
    with clock("sessions"):
        fp32 = graph.scorer(staging, "fp32")
        int8 = graph.scorer(staging, "int8")
    pairs = _sample_pairs(dev_set, sample_pairs)
    parity, ref, s8 = _sample_gates(graph, fp32, int8, pairs, clock, fp32_max_abs)
    parity["sample"] |= {"requested": sample_pairs, "source": dev_set.source if dev_set else "built-in pairs"}
    corpus = shipped[0] if shipped is not None else None
    if shipped is not None:
        with clock("corpus_vectors_gate"):
            parity["corpus_vectors"] = _corpus_vectors_gate(fp32, *shipped, pairs, corpus_vectors_max_l2)
    with clock("int8_mrr_gate"):
        dev_ref = _dev_int8_gate(parity, fp32, int8, dev_set, fusion, corpus, s8 - ref, int8_max_mrr_drop)
    # int8 blocks the export only when it is required (serve_variant "int8"); otherwise its gate result is
    # recorded (parity.json, metadata.json) and the server refuses to load a failed int8
    require_int8 = serve_variant == "int8"
    parity["int8"]["required"] = require_int8
    parity["passed"] = bool(
        parity["fp32"]["passed"]
        and (parity["int8"]["passed"] or not require_int8)
        and parity.get("corpus_vectors", {}).get("passed", True)
    )
    served = served_variant_for(serve_variant, bool(parity["int8"]["passed"]))
    parity["served_variant"] = {"policy": serve_variant, "served": served}
    with clock("serving_candidates"):
        parity["serving"] = _serving_gates(
            graph,
            staging,
            parity,
            serve_runtime,
            serve_variant,
            served,
            pairs[:candidate_pairs],
            ref[:candidate_pairs],
            len(pairs),
            dev_ref,
            dev_set,
            corpus,
            fp32_max_abs,
            int8_max_mrr_drop,
        )
    parity["passed"] = bool(parity["passed"] and parity["serving"]["passed"])
    parity["timings"] = clock.seconds
    if not parity["int8"]["passed"] and not require_int8:
        log.warning(
            "int8 variant FAILED its parity gate (MRR@10 drop %s > %s): exported for reference only; serving %s",
            parity["int8"].get("mrr@10_drop"),
            int8_max_mrr_drop,
            served,
        )
    return parity


def _metadata(
    graph: _Graph, staging: Path, parity: dict[str, Any], source: dict[str, Any], opset: int
) -> dict[str, Any]:
    """metadata.json: what the server needs + where the model came from + sha256 of every other file."""
    import onnx
    import onnxruntime
    import torch

    files = {
        f.name: sha256_file(f) for f in sorted(staging.iterdir()) if f.is_file() and f.name != METADATA_FILE
    }
    return {
        "format_version": METADATA_FORMAT,
        "model_name": source["model_name"],
        "version": source["version"],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "max_length": graph.max_length,
        "served_variant": parity["served_variant"]["served"],
        "served_variant_policy": parity["served_variant"]["policy"],
        # the served runtime + precision and their parity numbers (hardneg.rerank serves these by default)
        "serving": parity["serving"],
        **graph.metadata,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "variants": {v: {"file": f, "bytes": (staging / f).stat().st_size} for v, f in VARIANT_FILES.items()},
        "opset": opset,
        "exporter": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            **(
                {OPENVINO: _openvino_version()}
                if any(g["runtime"] == OPENVINO for g in parity["serving"]["candidates"].values())
                else {}
            ),
            "method": "torch.onnx.export(dynamo=False)",
            "int8": {"method": "onnxruntime quantize_dynamic", "weight_type": "QInt8", **INT8_OPTIONS},
        },
        "source": {"model": source["model"], "model_fingerprint": source["fingerprint"]},
        "lineage": source["lineage"],
        "fusion": source["fusion"],
        "metrics": source["metrics"],
        **({"corpus_vectors": source["corpus_vectors"]} if source.get("corpus_vectors") else {}),
        "parity": {
            "fp32_max_abs_diff": parity["fp32"]["max_abs_diff"],
            "int8_max_abs_diff": parity["int8"]["max_abs_diff"],
            "int8_mrr@10_drop": parity["int8"].get("mrr@10_drop"),
            "int8_passed": bool(parity["int8"]["passed"]),
            **(
                {"corpus_vectors_max_l2_diff": parity["corpus_vectors"]["max_l2_diff"]}
                if (parity.get("corpus_vectors") or {}).get("shipped")
                else {}
            ),
        },
        "files": files,
    }


def _openvino_version() -> str:
    import openvino

    return str(openvino.__version__)


def _gate_failure(parity: dict[str, Any], out: Path) -> GateFailedError:
    failed = []
    fp32, i8 = parity["fp32"], parity["int8"]
    if not fp32["passed"]:
        what = "cosine" if fp32.get("score") == KIND_SCORES[BI_ENCODER] else "score"
        failed.append(f"fp32 max |{what} diff| {fp32['max_abs_diff']:.3g} > {fp32['threshold']:g}")
        for role, e in (fp32.get("embeddings") or {}).items():
            if e["max_abs_diff"] > fp32["threshold"]:
                failed.append(
                    f"fp32 {role} graph max |embedding diff| {e['max_abs_diff']:.3g} > {fp32['threshold']:g}"
                )
    srv = parity.get("serving") or {}
    if not srv.get("passed", True) and "same_as" not in srv:  # same_as: the fp32 / int8 gate reported above
        failed.append(
            f"served runtime {srv['runtime']} ({srv['variant']}) failed its parity gate: "
            + (
                f"max |diff| {srv['max_abs_diff']:.3g} > {srv['threshold']:g}"
                if "threshold" in srv
                else f"int8 MRR@10 drop {srv.get('mrr@10_drop')} > {srv.get('threshold_mrr_drop')}"
            )
        )
    cv = parity.get("corpus_vectors") or {}
    if cv.get("passed") is False:
        failed.append(
            f"corpus vectors: max ||shipped - fp32 document graph|| {cv['max_l2_diff']:.3g} > "
            f"{cv['threshold_l2']:g} over {cv['documents']} documents (the embedding cache's vectors are not what "
            "the document graph computes: another model, max_length, prompt or text?)"
        )
    if not i8["passed"] and i8["required"]:
        failed.append(
            f"int8 MRR@10 drop {i8['mrr@10_drop']:.4f} > {i8['threshold_mrr_drop']:g} (fp32 {i8['mrr@10_fp32']:.4f}, int8 {i8['mrr@10_int8']:.4f})"
        )
    return GateFailedError(
        f"export parity gate failed: {'; '.join(failed)}. Numbers in {out / PARITY_FILE}; no {METADATA_FILE} written"
    )


def _check_source(src: Path, kind: str) -> None:
    what = "SentenceTransformer (bi-encoder)" if kind == BI_ENCODER else "CrossEncoder"
    saver = "SentenceTransformer.save" if kind == BI_ENCODER else "CrossEncoder.save_pretrained"
    if not (src / "config.json").exists():
        raise HardnegError(f"{src}: not a {what} folder (no config.json); pass what {saver} wrote")
    if not (src / TOKENIZER_FILE).exists():
        raise HardnegError(
            f"{src}: no {TOKENIZER_FILE} (a fast tokenizer is needed to serve without transformers)"
        )


def _source_info(
    src: Path, kind: str, params: dict[str, Any] | None, fusion_file: Path | None
) -> dict[str, Any]:
    """Lineage (+ the model's fingerprint) of the trained folder; the fusion and metrics of the evaluation folder
    that holds ``fusion_file`` (None: no fusion, the export serves reranker scores only)."""
    if (src / LINEAGE_FILE).exists():
        lineage = read_lineage(src)
    else:
        log.warning("%s has no %s: stamping the current lineage instead", src, LINEAGE_FILE)
        lineage = current_lineage(params)
        lineage.extra["note"] = f"source model had no {LINEAGE_FILE}"
    fingerprint = sha256_dir(src)
    lineage = lineage.derive(model_fingerprint=fingerprint)
    # the trainer records base_model as params named it: a folder's absolute path stays on the machine that built it
    lineage.inputs = {k: portable_name(v) if isinstance(v, str) else v for k, v in lineage.inputs.items()}
    return {
        "model": src.resolve().name,  # the trained folder's name; its fingerprint says which model it was
        "fingerprint": fingerprint,
        "lineage": lineage.to_dict(),
        "fusion": _read_fusion(fusion_file, kind) if fusion_file is not None else None,
        "metrics": _evaluation_metrics(fusion_file),
    }


def _evaluation_metrics(fusion_file: Path | None) -> dict[str, Any] | None:
    if fusion_file is None:
        return None
    metrics = (fusion_file if fusion_file.is_dir() else fusion_file.parent) / METRICS_FILE
    return _read_json(metrics) if metrics is not None and metrics.exists() else None


def _write_variants(graph: _Graph, staging: Path, props: dict[str, str]) -> str | dict[str, str]:
    """Stamp each fp32 graph, quantise it to int8 and stamp that, copy the tokenizer(s). Returns quant_pre_process's
    status (per graph role when there are two graphs)."""
    status: dict[str, str] = {}
    for role, files in graph.graphs.items():
        role_props = props | ({"hardneg.role": role} if len(graph.graphs) > 1 else {})
        fp32_path, int8_path = staging / files["fp32"], staging / files["int8"]
        _stamp_onnx(fp32_path, role_props | {"hardneg.variant": "fp32"})
        status[role] = _quantize_int8(fp32_path, int8_path)
        _stamp_onnx(int8_path, role_props | {"hardneg.variant": "int8"})
    for name, source in graph.copies.items():
        shutil.copy2(source, staging / name)
    return next(iter(status.values())) if len(status) == 1 else status


def _onnx_props(source: dict[str, Any], kind: str, max_length: int) -> dict[str, str]:
    lineage, fusion = source["lineage"], source["fusion"]
    return {
        "hardneg.lineage": json.dumps(lineage, sort_keys=True),
        "hardneg.data_version": lineage["data_version"],
        "hardneg.git_commit": lineage["git_commit"],
        "hardneg.params_hash": lineage["params_hash"],
        "hardneg.model_name": source["model_name"],
        "hardneg.version": source["version"],
        "hardneg.kind": kind,
        "hardneg.max_length": str(max_length),
        "hardneg.fusion_weight": "" if fusion is None else str(fusion["weight"]),
    }


@contextlib.contextmanager
def _export_staging(out: Path) -> Iterator[Path]:
    """:func:`hardneg.artifacts.staged_output` for an export: published whole on success (checksums, atomic swap,
    last writer wins), removed on failure (a full disk: one clear message), and never over a folder that is not an
    earlier export."""
    from hardneg.artifacts import staged_output

    if out.is_dir() and any(out.iterdir()):
        if not ((out / METADATA_FILE).exists() or (out / PARITY_FILE).exists()):
            raise HardnegError(
                f"--out {out} is a non-empty folder that is not a hardneg export: refusing to overwrite"
            )
    with staged_output(out, "hardneg export") as staging:
        yield staging


# long: the public entry point; a third of it is the docstring of the fusion, variant and runtime policies
def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dev_set: DevSet | None = None,
    *,
    opset: int = 17,
    parity_fp32_max_abs: float = 1e-4,
    parity_int8_max_mrr_drop: float = 0.005,
    sample_pairs: int = 128,
    candidate_pairs: int = 64,
    model_name: str | None = None,
    version: str | None = None,
    params: dict[str, Any] | None = None,
    serve_variant: str = "auto",
    serve_runtime: str = AUTO,
    fusion_file: str | os.PathLike | None = None,
    corpus_vectors: CorpusVectors | None = None,
    corpus_vectors_max_l2: float = 0.02,
    corpus_vectors_skipped: str | None = None,
) -> ExportResult:
    """Export ``model_dir`` (a trained model folder: a CrossEncoder, or a bi-encoder SentenceTransformer with
    a model card of kind ``bi-encoder``) to ``out_dir``; see the module docstring.

    ``fusion_file``: the evaluate stage's ``fusion.json`` or its folder (weight, gate, depth chosen on dev), shipped
    in the metadata and applied by the server; it must exist when given. None: no fusion (reranker scores only).

    ``serve_variant`` decides what the export serves (``metadata.json`` ``served_variant``, the server's default):
    ``"int8"`` (its MRR gate blocks the export), ``"fp32"`` (the int8 gate is recorded only) or ``"auto"`` (int8 if
    it passes its gate, else fp32 with a warning; the choice and the reason are recorded).

    ``serve_runtime`` (params ``serve.runtime``) decides what else is gated for the server to choose from
    (``metadata.json`` ``serving.candidates``): ``"auto"`` every runtime x precision of the servable variants (the
    server times them on its node and serves the fastest), ``"onnxruntime"`` / ``"openvino"`` that runtime at the
    served variant's precision (served as is).

    ``corpus_vectors`` (a ``tune: query`` bi-encoder only; :func:`corpus_vectors_decision`): shipped as
    ``corpus_vectors.npy`` (fp16, keyed by the sha256 of each text; ``metadata.json`` ``corpus_vectors``) for the
    server's document cache, gated against the fp32 document graph (max L2 difference <= ``corpus_vectors_max_l2``);
    the dev documents of the MRR@10 gates are then ranked from them, as served. ``corpus_vectors_skipped``: why none
    are shipped (recorded in parity.json).

    Raises :class:`GateFailedError` (after writing ``out_dir/parity.json``, without metadata.json) when a gate fails.
    """
    _check_serve_policies(serve_variant, serve_runtime)
    src, out = Path(model_dir), Path(out_dir).absolute()  # absolute: int8 quantisation runs in a temp cwd
    from hardneg.artifacts import verify_checksums

    verify_checksums(src, "hardneg train")  # a half-written or modified model folder is refused
    card = read_card(src)
    kind = card.kind
    _check_source(src, kind)
    t0 = time.perf_counter()
    source = _source_info(src, kind, params, Path(fusion_file) if fusion_file is not None else None)
    source.update(version=version or source["fingerprint"][:12], model_name=model_name or src.name)
    with _export_staging(out) as staging:
        build = _bi_encoder_graph if kind == BI_ENCODER else _cross_encoder_graph
        graph = build(src, staging / VARIANT_FILES["fp32"], opset, card)
        timings: dict[str, float] = {}
        doc_graph = graph.metadata.get("document_graph")
        if doc_graph is not None:  # the served scores depend on the document encoder too
            source["lineage"]["inputs"]["document_model_fingerprint"] = doc_graph["model_fingerprint"]
        shipped = None
        if corpus_vectors is not None:
            if doc_graph is None:
                raise HardnegError(
                    f"{src}: corpus vectors are shipped for a tune: query bi-encoder only (its documents keep the "
                    f"base model's vectors); this is a {kind}"
                    + (f" with tune: {card.tune}" if card.tune else "")
                )
            shipped = _ship_corpus_vectors(corpus_vectors, staging, int(graph.metadata["embedding_dim"]))
            source["corpus_vectors"] = shipped[1]
        pre_status = _write_variants(graph, staging, _onnx_props(source, kind, graph.max_length))
        timings["graphs"] = (
            time.perf_counter() - t0
        )  # export, int8 quantisation, stamps (+ corpus vectors file)
        parity = {"model": source["model"], "kind": kind} | _run_gates(
            graph,
            staging,
            dev_set,
            source["fusion"],
            sample_pairs=sample_pairs,
            candidate_pairs=candidate_pairs,
            fp32_max_abs=parity_fp32_max_abs,
            int8_max_mrr_drop=parity_int8_max_mrr_drop,
            serve_variant=serve_variant,
            serve_runtime=serve_runtime,
            shipped=shipped,
            corpus_vectors_max_l2=corpus_vectors_max_l2,
        )
        if shipped is None and corpus_vectors_skipped is not None:
            parity["corpus_vectors"] = {"shipped": False, "reason": corpus_vectors_skipped}
        parity["int8"]["quant_pre_process"] = pre_status
        parity["seconds"] = round(time.perf_counter() - t0, 2)
        parity["timings"] = {
            "graphs": round(
                timings["graphs"], 2
            ),  # export, int8 quantisation, stamps (+ the corpus vectors file)
            "gates": round(parity["seconds"] - timings["graphs"], 2),
            **parity.get("timings", {}),  # the gates' phases
        }
        (staging / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n", encoding="utf-8")
        source["fusion"] = _ship_seen_documents(source["fusion"], staging)
        metadata = _metadata(graph, staging, parity, source, opset) if parity["passed"] else {}
        if metadata:
            (staging / METADATA_FILE).write_text(
                json.dumps(metadata, indent=2, sort_keys=True) + "\n", "utf-8"
            )
    if not parity["passed"]:
        raise _gate_failure(parity, out)
    diffs = (parity["fp32"]["max_abs_diff"], parity["int8"]["max_abs_diff"])
    log.info(
        "exported %s (%s) -> %s in %.1fs (max diff fp32 %.2e, int8 %.2e)",
        src,
        kind,
        out,
        parity["seconds"],
        *diffs,
    )
    return ExportResult(out, parity, metadata)


SERVE_VARIANTS = ("auto", "int8", "fp32")


def _check_serve_policies(serve_variant: str, serve_runtime: str) -> None:
    if serve_variant not in SERVE_VARIANTS:
        raise HardnegError(f"serve variant must be one of {list(SERVE_VARIANTS)}, got '{serve_variant}'")
    if serve_runtime not in POLICIES:
        raise HardnegError(f"serve runtime must be one of {list(POLICIES)}, got '{serve_runtime}'")


def served_variant_for(policy: str, int8_passed: bool) -> str:
    """The variant an export serves under ``policy`` (params ``serve.variant``) given the int8 gate result."""
    if policy == "auto":
        return "int8" if int8_passed else "fp32"
    return policy


def export_from_params(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: dict[str, Any],
    dev_set: DevSet | None = None,
    **kwargs: Any,
) -> ExportResult:
    """``export_model`` with the thresholds and opset of params' ``export`` section."""
    from hardneg.settings import settings

    s = settings(params)
    e = s.export
    return export_model(
        model_dir,
        out_dir,
        dev_set,
        opset=e.opset,
        parity_fp32_max_abs=e.parity_fp32_max_abs,
        parity_int8_max_mrr_drop=e.parity_int8_max_mrr_drop,
        sample_pairs=e.parity_sample_pairs,
        candidate_pairs=e.parity_candidate_pairs,
        params=params,
        serve_variant=s.serve.variant,
        serve_runtime=s.serve.runtime,
        corpus_vectors_max_l2=e.corpus_vectors_max_l2,
        **kwargs,
    )


def read_export_lineage(onnx_path: str | os.PathLike) -> Lineage:
    """The lineage stamped into an exported ONNX file's metadata_props."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    if "hardneg.lineage" not in props:
        raise HardnegError(f"{onnx_path}: no hardneg.lineage in metadata_props: not a hardneg export")
    return Lineage.from_dict(json.loads(props["hardneg.lineage"]))
