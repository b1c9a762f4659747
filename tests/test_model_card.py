"""hardneg.model_card: the one reader and writer of a trained model folder's contract (hardneg_model.json), its
refusals, and the scorer that evaluation builds from it."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hardneg.model_card as mc
from hardneg.config import default_params
from hardneg.errors import HardnegError
from hardneg.model_card import CARD_FILE, ModelCard, read_card, write_card
from hardneg.settings import settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "card, on_disk",
    [
        (
            ModelCard.cross_encoder(256, "all-MiniLM-L6-v2"),
            {"kind": "cross-encoder", "max_length": 256, "base_model": "all-MiniLM-L6-v2"},
        ),
        (
            ModelCard.bi_encoder(128, "org/base", "query"),
            {
                "kind": "bi-encoder",
                "max_length": 128,
                "base_model": "org/base",
                "tune": "query",
                "document_encoder": "org/base",
            },
        ),
        (
            ModelCard.bi_encoder(64, "all-MiniLM-L6-v2", "both"),
            {
                "kind": "bi-encoder",
                "max_length": 64,
                "base_model": "all-MiniLM-L6-v2",
                "tune": "both",
                "document_encoder": "self",
            },
        ),
    ],
)
def test_write_then_read_gives_the_same_card(tmp_path, card, on_disk):
    p = write_card(tmp_path, card)
    assert p == tmp_path / CARD_FILE == tmp_path / "hardneg_model.json"
    assert json.loads(p.read_text(encoding="utf-8")) == on_disk  # cross-encoder: no bi-encoder keys
    got = read_card(tmp_path)
    assert got == card and got.to_dict() == on_disk
    assert got.score == ("cosine" if card.kind == "bi-encoder" else "sigmoid")
    assert got.separate_document_encoder == (card.tune == "query")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.kind = "cross-encoder"  # type: ignore[misc]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_a_partial_bi_encoder_card_is_completed_as_the_exporter_did():
    """Hand-written bi-encoder cards may leave out what follows from the rest."""
    both = ModelCard.from_dict({"kind": "bi-encoder", "max_length": 64})
    assert (both.tune, both.document_encoder) == ("both", "self")
    query = ModelCard.from_dict({"kind": "bi-encoder", "max_length": 64, "tune": "query", "base_model": "m"})
    assert (query.tune, query.document_encoder) == ("query", "m")
    named = ModelCard.from_dict({"kind": "bi-encoder", "max_length": 64, "document_encoder": "m"})
    assert (named.tune, named.document_encoder) == ("query", "m")
    with pytest.raises(HardnegError, match="nothing embeds the documents"):
        ModelCard.from_dict({"kind": "bi-encoder", "max_length": 64, "tune": "query"})


# ------------------------------------------------------------------------------------------------- refusals


def test_a_folder_without_a_card_is_refused_with_the_fix(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # looks like a model folder, but nothing says its kind
    with pytest.raises(HardnegError) as e:
        read_card(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / CARD_FILE} not found")
    assert "its kind is unknown" in msg and "Rerun `hardneg train`" in msg
    assert '{"kind": "cross-encoder", "max_length":' in msg  # what to write for a folder trained before cards
    with pytest.raises(HardnegError, match="no such model folder"):
        read_card(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["colbert", "Cross-Encoder", "", None])
def test_an_unknown_kind_is_refused_on_write_and_on_read(tmp_path, kind):
    with pytest.raises(HardnegError, match=re.escape(f"unknown model kind {kind!r}")):
        ModelCard(kind, 64)  # type: ignore[arg-type]
    (tmp_path / CARD_FILE).write_text(json.dumps({"kind": kind, "max_length": 64}))
    with pytest.raises(HardnegError, match=re.escape(f"{tmp_path / CARD_FILE}: unknown model kind {kind!r}")):
        read_card(tmp_path)


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"kind": "cross-encoder"}', "no 'max_length'"),
        ('{"max_length": 64}', "no 'kind'"),
        ('{"kind": "cross-encoder", "max_length": 2}', "max_length must be an integer >= 4, got 2"),
        ('{"kind": "cross-encoder", "max_length": "64"}', "max_length must be an integer >= 4, got '64'"),
        ('{"kind": "cross-encoder", "max_length": true}', "max_length must be an integer >= 4, got True"),
        ('{"kind": "cross-encoder", "max_length": 64, "tune": "query"}', "a cross-encoder has no tune"),
        ('{"kind": "cross-encoder", "max_length": 64, "base_model": ""}', "base_model must be"),
        ('{"kind": "bi-encoder", "max_length": 64, "tune": "docs"}', "tune must be one of"),
        (
            '{"kind": "bi-encoder", "max_length": 64, "tune": "query", "document_encoder": "self"}',
            'document_encoder cannot be "self"',
        ),
        ('{"kind": "bi-encoder", "max_length": 64, "document_encoder": ""}', "document_encoder must be"),
        ('{"kind": "bi-encoder", "max_length": 64, "pooling": "cls"}', r"unknown key\(s\) \['pooling'\]"),
        ('["bi-encoder", 64]', "expected an object"),
        ('{"kind": "bi-encoder",', "cannot read JSON"),
    ],
)
def test_a_malformed_card_is_refused_naming_the_file(tmp_path, content, match):
    (tmp_path / CARD_FILE).write_text(content)
    with pytest.raises(HardnegError, match=match) as e:
        read_card(tmp_path)
    assert str(e.value).startswith(str(tmp_path / CARD_FILE))


# ----------------------------------------------------------------------------------------- one definition


def test_the_contract_is_defined_once():
    import hardneg.artifacts as artifacts
    import hardneg.biencoder as biencoder
    import hardneg.export as export
    import hardneg.release as release
    import hardneg.rerank as rerank

    assert rerank.KINDS is mc.KINDS and rerank.KIND_SCORES is mc.KIND_SCORES
    assert biencoder.TUNE_MODES is mc.TUNE_MODES
    assert rerank.METADATA_FILE is release.METADATA_FILE is artifacts.METADATA_FILE
    for gone in ("KIND_FILE",):
        assert not hasattr(artifacts, gone)
    for gone in ("MODEL_INFO_FILE", "read_model_info", "document_encoder_of", "TUNE_MODES"):
        assert not hasattr(export, gone)
    assert not hasattr(biencoder, "model_kind") and not hasattr(biencoder, "KINDS")
    # the file name is spelled in code once (docstrings may name it)
    spelled = [
        f"{p.relative_to(REPO)}:{i}"
        for d in ("hardneg", "serving", "components", "pipelines", "benchmarks")
        for p in sorted((REPO / d).rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"""["']hardneg_model\.json["']""", line)
    ]
    assert spelled == ["hardneg/model_card.py:" + str(_line_of('CARD_FILE = "hardneg_model.json"'))]


def _line_of(text: str) -> int:
    lines = (REPO / "hardneg" / "model_card.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.startswith(text))


def test_the_model_card_imports_no_torch_and_no_numpy():
    code = "import sys, hardneg.model_card; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------------ evaluation's scorer


def test_the_evaluation_scorer_follows_the_card(tmp_path, copy_model, tiny_model_dir):
    """stages.make_scorer: a cross-encoder truncates at the card's max_length (what it was trained with, not
    today's params); a bi-encoder card gives the cosine scorer; a folder without a card is refused."""
    from hardneg.biencoder import BiEncoderScorer
    from hardneg.scoring import CrossEncoderScorer
    from hardneg.stages import make_scorer

    params = default_params()
    ce_dir = copy_model("ce")
    with pytest.raises(HardnegError, match="has no model card"):
        make_scorer(ce_dir, settings(params), None)
    write_card(ce_dir, ModelCard.cross_encoder(40, str(tiny_model_dir)))
    assert params["train"]["cross_encoder"]["max_length"] != 40
    scorer = make_scorer(ce_dir, settings(params), None)
    assert isinstance(scorer, CrossEncoderScorer) and scorer.max_length == 40
    write_card(ce_dir, ModelCard.bi_encoder(24, str(tiny_model_dir), "both"))
    bi = make_scorer(ce_dir, settings(params), None)
    assert isinstance(bi, BiEncoderScorer) and bi.model.max_seq_length == 24
