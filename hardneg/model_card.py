"""The model card: the contract of a trained model folder (``hardneg train``'s output), read and written here only.

Both trainers write ``hardneg_model.json`` beside the weights (:func:`write_card`); everything that later reads the
folder (evaluation's scorer, the ONNX export) reads it through :func:`read_card`::

    {"kind": "cross-encoder", "max_length": 256, "base_model": "all-MiniLM-L6-v2"}
    {"kind": "bi-encoder", "max_length": 256, "base_model": "all-MiniLM-L6-v2",
     "tune": "query" | "both", "document_encoder": "self" | <the base model>}

``tune: query`` fine-tunes the query tower only: documents keep the base model's vectors, so the base model is the
document encoder (the export ships it as a second graph); ``tune: both`` embeds both sides with the tuned model
(``document_encoder: "self"``). A folder without a card is refused (its kind would be a guess).

Torch-free and small (stdlib + :mod:`hardneg.artifacts`): :mod:`hardneg.rerank` and ``serving/`` (the torch-free
serving image) take the kind names from here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hardneg.artifacts import atomic_write_json, read_json
from hardneg.errors import HardnegError

CARD_FILE = "hardneg_model.json"
CROSS_ENCODER, BI_ENCODER = "cross-encoder", "bi-encoder"
KINDS = (CROSS_ENCODER, BI_ENCODER)
# what each kind's score is (evaluation's metrics.json / fusion.json and the export's metadata.json "score")
KIND_SCORES = {CROSS_ENCODER: "sigmoid", BI_ENCODER: "cosine"}
# bi-encoder: query tower only (documents keep the base model) | both towers
TUNE_QUERY, TUNE_BOTH = "query", "both"
TUNE_MODES = (TUNE_QUERY, TUNE_BOTH)
SELF_ENCODER = "self"  # the document_encoder of a bi-encoder that embeds both sides
_FIELDS = ("kind", "max_length", "base_model", "tune", "document_encoder")


@dataclass(frozen=True)
class ModelCard:
    """A trained model folder's kind and how to load and serve it (validated on construction).

    ``max_length``: tokens per input as trained (a cross-encoder's pair, each of a bi-encoder's query and document).
    ``base_model``: the pretrained model it started from, as named in params (registry name, HF id or folder).
    ``tune`` / ``document_encoder``: bi-encoder only (None for a cross-encoder)."""

    kind: str
    max_length: int
    base_model: str | None = None
    tune: str | None = None
    document_encoder: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HardnegError(f"unknown model kind {self.kind!r}; expected one of {list(KINDS)}")
        ml = self.max_length
        if not isinstance(ml, int) or isinstance(ml, bool) or ml < 4:
            raise HardnegError(f"max_length must be an integer >= 4, got {ml!r}")
        if self.base_model is not None and (
            not isinstance(self.base_model, str) or not self.base_model.strip()
        ):
            raise HardnegError(f"base_model must be a model name or folder, got {self.base_model!r}")
        if self.kind == CROSS_ENCODER:
            if self.tune is not None or self.document_encoder is not None:
                raise HardnegError(
                    "a cross-encoder has no tune / document_encoder (they describe bi-encoder towers)"
                )
            return
        if self.tune not in TUNE_MODES:
            raise HardnegError(f"tune must be one of {list(TUNE_MODES)}, got {self.tune!r}")
        doc = self.document_encoder
        if not isinstance(doc, str) or not doc.strip():
            raise HardnegError(f'document_encoder must be "self" or a model name/folder, got {doc!r}')
        if self.tune == TUNE_QUERY and doc == SELF_ENCODER:
            raise HardnegError(
                'tune "query" keeps the documents\' base-model vectors: document_encoder cannot be "self"'
            )

    @classmethod
    def cross_encoder(cls, max_length: int, base_model: str | None) -> ModelCard:
        return cls(CROSS_ENCODER, max_length, base_model)

    @classmethod
    def bi_encoder(cls, max_length: int, base_model: str, tune: str) -> ModelCard:
        """As the bi-encoder trainer records it: ``tune: query`` -> the base model embeds the documents."""
        return cls(
            BI_ENCODER, max_length, base_model, tune, base_model if tune == TUNE_QUERY else SELF_ENCODER
        )

    @property
    def score(self) -> str:
        """``sigmoid`` (cross-encoder) or ``cosine`` (bi-encoder)."""
        return KIND_SCORES[self.kind]

    @property
    def separate_document_encoder(self) -> bool:
        """A bi-encoder whose documents go through another model (its base model): two graphs in the export."""
        return self.kind == BI_ENCODER and self.document_encoder != SELF_ENCODER

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any) -> ModelCard:
        """From a card's JSON object. Bi-encoder cards may leave out what follows from the rest (cards written by
        hand): no ``document_encoder`` -> the base model under ``tune: query``, else ``self``; no ``tune`` -> ``both``
        when the documents go through the model itself, else ``query``."""
        if not isinstance(d, dict):
            raise HardnegError(f'expected an object {{"kind": ..., "max_length": ...}}, got {d!r}')
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise HardnegError(f"unknown key(s) {unknown}; a model card has {list(_FIELDS)}")
        for key in ("kind", "max_length"):
            if key not in d:
                raise HardnegError(f"no {key!r} (a model card needs kind and max_length)")
        tune, doc = d.get("tune"), d.get("document_encoder")
        if d["kind"] == BI_ENCODER:
            if doc is None and tune == TUNE_QUERY:
                doc = d.get("base_model")
                if not doc:
                    raise HardnegError(
                        'tune "query" without a document_encoder or base_model: nothing embeds the documents'
                    )
            doc = SELF_ENCODER if doc is None else doc
            tune = tune if tune is not None else (TUNE_BOTH if doc == SELF_ENCODER else TUNE_QUERY)
        return cls(d["kind"], d["max_length"], d.get("base_model"), tune, doc)


def card_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / CARD_FILE


def write_card(model_dir: str | os.PathLike, card: ModelCard) -> Path:
    """Write ``model_dir/hardneg_model.json`` (atomically); the trainers call this beside saving the weights."""
    p = card_path(model_dir)
    atomic_write_json(p, card.to_dict())
    return p


def read_card(model_dir: str | os.PathLike) -> ModelCard:
    """The card of a trained model folder. A folder without one, or with a malformed one, raises
    :class:`HardnegError` naming the file and the fix (no fallback: a missing card used to mean "cross-encoder",
    which made any folder exportable as one)."""
    p = card_path(model_dir)
    if not Path(model_dir).is_dir():
        raise HardnegError(f"{model_dir}: no such model folder (`hardneg train --out` writes one)")
    if not p.is_file():
        raise HardnegError(
            f"{p} not found: {model_dir} has no model card, so its kind is unknown. Rerun `hardneg train` (both "
            "trainers write one); for a cross-encoder trained before model cards existed, write it by hand: "
            '{"kind": "cross-encoder", "max_length": <train.cross_encoder.max_length it was trained with>, '
            '"base_model": "<train.base_model>"}'
        )
    try:
        return ModelCard.from_dict(read_json(p, rerun="hardneg train"))
    except HardnegError as e:
        if str(e).startswith(str(p)):  # read_json's messages name the file already
            raise
        raise HardnegError(f"{p}: {e}") from None
