"""Scoring (query, document) pairs for evaluation and training: the :class:`Scorer` protocol, the torch
cross-encoder scorer (sigmoid, as served), raw logits in length-sorted batches, and the ONNX scorer (through
:mod:`hardneg.rerank`, what is served). The bi-encoder's scorer is :class:`hardneg.biencoder.BiEncoderScorer`; thread
setup is :func:`hardneg.hw.apply_torch_threads`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from hardneg.errors import HardnegError


class Scorer(Protocol):
    """Anything that scores (query, document) pairs (torch or ONNX, cross- or bi-encoder)."""

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


class CrossEncoderScorer:
    """Scores (query, document) pairs with a torch cross-encoder: sigmoid scores (as served), bf16 autocast on CPU,
    batches of similar token length (sorting by length removes most of the padding work)."""

    def __init__(self, model: Any, max_length: int | None = None, batch_size: int = 64, bf16: bool = True):
        from sentence_transformers import CrossEncoder

        self.ce = model if isinstance(model, CrossEncoder) else CrossEncoder(str(model), device="cpu")
        self.max_length = int(max_length or self.ce.max_length or 512)
        self.batch_size = batch_size
        self.bf16 = bf16

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return sigmoid(
            score_pairs(self.ce.model, self.ce.tokenizer, pairs, self.max_length, self.batch_size, self.bf16)
        )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))).astype(np.float32)


def score_pairs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
    batch_size: int = 64,
    bf16: bool = True,
) -> np.ndarray:
    """Raw logits of a 1-logit sequence-classification model for each pair (input order)."""

    if not pairs:
        return np.zeros(0, dtype=np.float32)
    enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros(len(pairs), dtype=np.float32)
    with inference(model, bf16):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt")
            logits = model(**feats).logits
            out[idx] = logits.float().reshape(len(idx), -1)[:, 0].numpy()
    return out


@contextlib.contextmanager
def inference(model: Any, bf16: bool) -> Iterator[None]:
    """Batched torch inference: the model in eval mode (its training flag restored after), no autograd, bf16
    autocast when ``bf16`` (the one inference context of the cross-encoder and bi-encoder scorers)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            yield
    finally:
        model.train(was_training)


class OnnxScorer:
    """Scores pairs with an exported ONNX folder through :mod:`hardneg.rerank` (what is served is what is measured)."""

    def __init__(
        self, export_dir: str | os.PathLike, variant: str | None = None, doc_cache_size: int | None = None
    ):
        try:
            from hardneg.rerank import OnnxReranker
        except ImportError as e:  # pragma: no cover - depends on the export stage being installed
            raise HardnegError(f"evaluating an ONNX export needs hardneg.rerank ({e})") from None
        # a bi-encoder's document cache as a server holds it (with the export's corpus vectors, when it ships some)
        self.reranker = OnnxReranker(export_dir, variant=variant, doc_cache_size=doc_cache_size)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.asarray(
            self.reranker.score_pairs([p[0] for p in pairs], [p[1] for p in pairs]), dtype=np.float32
        )
