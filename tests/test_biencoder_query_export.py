"""A bi-encoder trained with ``tune: query`` (only the query tower learns; documents keep the base model's vectors):
the export ships the base model as a second graph (``doc_model*.onnx``), the gates compare against torch
cosine(query model(q), base model(d)), and OnnxReranker and the server score queries with the query graph and
documents with the document graph."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _tiny_biencoder import BI_MAX_LENGTH, build_paths_in, trained_tiny_bi, trained_tiny_query_bi
from _tiny_reranker import REPO, TINY_INT8_MAX_MRR_DROP, tiny_dev_set

from hardneg.artifacts import write_checksums
from hardneg.errors import GateFailedError, HardnegError
from hardneg.export import _score_dev, export_model, mrr_at_k
from hardneg.lineage import sha256_dir, sha256_file
from hardneg.model_card import CARD_FILE, read_card, write_card
from hardneg.rerank import ExportIntegrityError, OnnxReranker, verify_export_dir

pytestmark = pytest.mark.unit

QUERY = "does vitamin d improve bone density"
DOCS = [
    "Vitamin D supplementation had no effect on bone mineral density.",
    "a",
    "Cells are the basic unit of life " * 40,  # > max_length tokens: truncated
    "Aspirin lowered the rate of myocardial infarction in a randomised trial.",
    "",
    "Ünïcödé: naïve café, 東京 🧬 ±≤≥",
    "bone density bone density vitamin",
]
QUERY_FILES = {"model.onnx", "model.int8.onnx"}
DOC_FILES = {"doc_model.onnx", "doc_model.int8.onnx"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    """The document encoder: the trained tiny bi-encoder (Transformer + mean Pooling + Normalize)."""
    return trained_tiny_bi(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def query_dir(tmp_path_factory, base_dir, tiny_model_dir, tiny_data_dir):
    """The query tower fine-tuned by the trainer with tune: query against the base model's fixed document vectors."""
    return trained_tiny_query_bi(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def q_export(tmp_path_factory, query_dir, tiny_data_dir):
    out = tmp_path_factory.mktemp("query-export") / "exp"
    export_model(
        query_dir,
        out,
        tiny_dev_set(tiny_data_dir),
        model_name="tiny-query-bi",
        version="q1",
        parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
    )
    return out


@pytest.fixture(scope="module")
def towers(query_dir, base_dir):
    from sentence_transformers import SentenceTransformer

    q = SentenceTransformer(str(query_dir), device="cpu")
    d = SentenceTransformer(str(base_dir), device="cpu")
    q.max_seq_length = d.max_seq_length = BI_MAX_LENGTH
    return q, d


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def torch_cosines(q_model, d_model, query, docs):
    qv = unit(q_model.encode([query], show_progress_bar=False))[0]
    return unit(d_model.encode(list(docs), show_progress_bar=False)) @ qv


def test_the_trainer_records_the_base_model_as_document_encoder(query_dir, base_dir):
    card = read_card(query_dir)
    assert card.tune == "query" and card.document_encoder == card.base_model == str(base_dir)
    assert card.separate_document_encoder


def test_export_ships_both_graphs_checksummed_and_passes_parity(q_export, base_dir, query_dir):
    names = {p.name for p in q_export.iterdir()}
    assert QUERY_FILES | DOC_FILES | {"tokenizer.json", "metadata.json", "parity.json"} <= names
    assert "doc_tokenizer.json" not in names  # the query tower kept the base model's tokenizer: reused
    meta = json.loads((q_export / "metadata.json").read_text())
    assert meta["kind"] == "bi-encoder" and meta["tune"] == "query"
    # the card names the base model by its absolute folder: shipped, it is the folder's name + its fingerprint
    assert meta["document_encoder"] == meta["base_model"] == base_dir.name
    doc = meta["document_graph"]
    assert doc["variants"] == {"fp32": "doc_model.onnx", "int8": "doc_model.int8.onnx"}
    assert doc["tokenizer"] == "tokenizer.json" and doc["model_fingerprint"] == sha256_dir(base_dir)
    assert doc["model"] == base_dir.name and "model_dir" not in doc
    assert meta["lineage"]["inputs"]["document_model_fingerprint"] == sha256_dir(base_dir)
    assert meta["lineage"]["inputs"]["model_fingerprint"] == sha256_dir(query_dir)
    assert sorted(meta["files"]) == sorted(n for n in names if n not in ("metadata.json", "checksums.sha256"))
    for name, digest in meta["files"].items():
        assert sha256_file(q_export / name) == digest
    for role, files in (("query", QUERY_FILES), ("document", DOC_FILES)):
        for f in files:
            props = {p.key: p.value for p in onnx.load(str(q_export / f)).metadata_props}
            assert props["hardneg.role"] == role and props["hardneg.kind"] == "bi-encoder"
            assert props["hardneg.variant"] == ("int8" if "int8" in f else "fp32")
    for f in ("model.int8.onnx", "doc_model.int8.onnx"):  # both quantised alike: 7-bit weights (AVX2-safe)
        m = onnx.load(str(q_export / f))
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        w = [inits[n.input[1]] for n in m.graph.node if n.op_type == "MatMulInteger" and n.input[1] in inits]
        assert w and max(int(np.abs(x.astype(np.int16)).max()) for x in w) == 64
    parity = json.loads((q_export / "parity.json").read_text())
    assert parity["passed"] is True
    fp32 = parity["fp32"]
    assert fp32["passed"] is True and fp32["max_abs_diff"] <= 1e-4
    assert set(fp32["embeddings"]) == {"query", "document"}
    assert all(0 < e["texts"] and e["max_abs_diff"] <= 1e-4 for e in fp32["embeddings"].values())
    assert set(parity["int8"]["quant_pre_process"]) == {"query", "document"}
    assert parity["int8"]["passed"] is True and parity["int8"]["mrr@10_fp32"] > 0.5


def test_the_two_graph_export_names_no_path_of_the_machine_that_built_it(q_export, tmp_path_factory):
    """The document graph's model, the base model and the lineage's base_model were absolute folders of this run's
    temp folder; none of it (nor the checkout, nor the venv) is in metadata.json, parity.json or the graphs."""
    assert build_paths_in(q_export, [tmp_path_factory.getbasetemp(), REPO, Path(sys.prefix)]) == []
    meta = json.loads((q_export / "metadata.json").read_text())
    assert meta["lineage"]["inputs"]["base_model"] == meta["base_model"]


def test_scores_are_query_model_vs_base_model_cosines(q_export, towers):
    q_model, d_model = towers
    r = OnnxReranker(q_export, "fp32", doc_cache_size=0)
    assert r.tune == "query" and r.document_encoder == r.metadata["document_encoder"]
    got = r.score(QUERY, DOCS)
    expected = torch_cosines(q_model, d_model, QUERY, DOCS)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # one graph for both sides would serve other scores: the query tower really moved away from the base model
    assert np.abs(got - torch_cosines(q_model, q_model, QUERY, DOCS)).max() > 0.05
    assert np.abs(got - torch_cosines(d_model, d_model, QUERY, DOCS)).max() > 0.05
    # the document cache holds document-graph (base model) embeddings
    cached = OnnxReranker(q_export, "fp32", doc_cache_size=10)
    np.testing.assert_allclose(cached.score(QUERY, DOCS[:2]), got[:2], atol=1e-6)
    emb = cached.scorer.embed_documents(DOCS[:1])[0]
    assert cached.cache_hits == 1
    np.testing.assert_allclose(emb, unit(d_model.encode(DOCS[:1], show_progress_bar=False))[0], atol=1e-5)
    assert np.abs(emb - unit(q_model.encode(DOCS[:1], show_progress_bar=False))[0]).max() > 1e-2


def test_the_int8_gate_scores_as_served_with_both_int8_graphs(q_export, tiny_data_dir):
    parity = json.loads((q_export / "parity.json").read_text())
    dev = tiny_dev_set(tiny_data_dir)
    for variant in ("fp32", "int8"):
        served = OnnxReranker(q_export, variant, doc_cache_size=0)
        assert parity["int8"][f"mrr@10_{variant}"] == pytest.approx(mrr_at_k(_score_dev(served, dev), dev))
    int8 = OnnxReranker(q_export, "int8", doc_cache_size=0)
    fp32 = OnnxReranker(q_export, "fp32", doc_cache_size=0)
    a, b = fp32.score(QUERY, DOCS), int8.score(QUERY, DOCS)
    assert 0 < np.abs(a - b).max() < 0.05
    # both int8 graphs are used: the int8 document embedding differs from the fp32 one
    d8, d32 = int8.scorer.embed_documents(DOCS[:1]), fp32.scorer.embed_documents(DOCS[:1])
    assert 0 < np.abs(d8 - d32).max() < 0.05


def test_a_missing_or_modified_document_graph_is_refused(q_export, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(q_export, d)
    (d / "doc_model.int8.onnx").write_bytes(b"tampered")
    with pytest.raises(ExportIntegrityError, match="checksum mismatch for doc_model.int8.onnx"):
        OnnxReranker(d, "int8")
    (d / "doc_model.int8.onnx").unlink()
    with pytest.raises(ExportIntegrityError, match="doc_model.int8.onnx is missing"):
        verify_export_dir(d, ["fp32"])
    meta = json.loads((d / "metadata.json").read_text())
    del meta["files"]["doc_model.int8.onnx"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ExportIntegrityError, match="doc_model.int8.onnx is not listed"):
        OnnxReranker(d, "int8")
    meta["document_graph"] = {"variants": {"fp32": "doc_model.onnx"}, "tokenizer": "tokenizer.json"}
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ExportIntegrityError, match="document_graph must be"):
        OnnxReranker(d, "fp32")


def test_the_cosine_gate_fails_when_torch_scores_documents_with_the_query_model(
    query_dir, tmp_path, monkeypatch
):
    import hardneg.export as export_mod

    real = export_mod._torch_cosines
    monkeypatch.setattr(
        export_mod, "_torch_cosines", lambda st, pairs, doc_st=None, **kw: real(st, pairs, **kw)
    )
    with pytest.raises(GateFailedError, match=r"fp32 max \|cosine diff\|"):
        export_model(query_dir, tmp_path / "exp", None)
    assert not (tmp_path / "exp" / "metadata.json").exists()


def test_a_document_encoder_with_another_tokenizer_ships_its_own(query_dir, base_dir, towers, tmp_path):
    from tokenizers import Tokenizer, normalizers

    doc_enc = tmp_path / "doc-encoder"
    shutil.copytree(base_dir, doc_enc)
    tok = Tokenizer.from_file(str(doc_enc / "tokenizer.json"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)  # case now matters for documents only
    tok.save(str(doc_enc / "tokenizer.json"))
    cfg = json.loads((doc_enc / "tokenizer_config.json").read_text())
    (doc_enc / "tokenizer_config.json").write_text(
        json.dumps(cfg | {"do_lower_case": False})
    )  # what HF reads
    src = tmp_path / "q"
    shutil.copytree(query_dir, src)
    write_card(src, dataclasses.replace(read_card(src), document_encoder=str(doc_enc)))
    write_checksums(src)  # a deliberate edit of a trained folder: re-sign it
    res = export_model(src, tmp_path / "exp", None)
    assert res.metadata["document_graph"]["tokenizer"] == "doc_tokenizer.json"
    assert {"doc_tokenizer.json", "doc_tokenizer_config.json"} <= set(res.metadata["files"])
    from sentence_transformers import SentenceTransformer

    d_model = SentenceTransformer(str(doc_enc), device="cpu")
    d_model.max_seq_length = BI_MAX_LENGTH
    docs = ["Vitamin D Bone Density", "vitamin d bone density"]
    got = OnnxReranker(tmp_path / "exp", "fp32", doc_cache_size=0).score(QUERY, docs)
    np.testing.assert_allclose(got, torch_cosines(towers[0], d_model, QUERY, docs), atol=1e-4)
    assert abs(got[0] - got[1]) > 1e-3  # the document tokenizer (cased) was used, not the query one


def test_bad_tune_and_document_encoder_are_refused(query_dir, tmp_path):
    src = tmp_path / "q"
    shutil.copytree(query_dir, src)
    info = read_card(src).to_dict()
    for bad, match in (
        ({"tune": "docs"}, "tune must be one of"),
        ({"tune": "query", "document_encoder": "self"}, 'document_encoder cannot be "self"'),
        ({"document_encoder": ""}, "document_encoder must be"),
        ({"document_encoder": "no-such-model"}, "document_encoder 'no-such-model'"),
        ({"document_encoder": str(tmp_path / "missing")}, "document_encoder"),
    ):
        (src / CARD_FILE).write_text(json.dumps(info | bad))  # a hand-edited card: write_card refuses these
        write_checksums(src)
        with pytest.raises(HardnegError, match=match):
            export_model(src, tmp_path / "exp", None)
    assert not (tmp_path / "exp" / "metadata.json").exists()


def test_server_answers_v1_and_v2_with_both_graphs(q_export):
    from fastapi.testclient import TestClient

    from serving.predictor import HardnegReranker, Limits
    from serving.server import create_app

    name = "tiny-q"
    model = HardnegReranker(  # onnxruntime, as the reference (runtime auto could choose OpenVINO bf16)
        name,
        str(q_export),
        limits=Limits(8, 500, 20_000),
        variant="fp32",
        doc_cache_size=4,
        runtime="onnxruntime",
    )
    model.load()
    ref = OnnxReranker(q_export, "fp32", doc_cache_size=0)
    docs = [DOCS[0], DOCS[3], DOCS[6]]
    scores, order = ref.rerank(QUERY, docs)
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        p = c.get(f"/v2/models/{name}").json()["parameters"]
        assert p["kind"] == "bi-encoder" and p["tune"] == "query"
        assert p["document_encoder"] == ref.metadata["document_encoder"]
        r = c.post(f"/v1/models/{name}:predict", json={"instances": [{"query": QUERY, "documents": docs}]})
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        np.testing.assert_allclose(pred["scores"], scores, atol=1e-6)
        assert pred["ranking"] == list(order)
        body = {
            "id": "q-1",
            "inputs": [
                {"name": "query", "shape": [1], "datatype": "BYTES", "data": [QUERY]},
                {"name": "documents", "shape": [len(docs)], "datatype": "BYTES", "data": docs},
            ],
        }
        r = c.post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        np.testing.assert_allclose(out["scores"]["data"], scores, atol=1e-6)
        assert out["ranking"]["data"] == list(order)


def test_cli_export_names_the_document_encoder(query_dir, base_dir, tmp_path):
    from typer.testing import CliRunner

    from hardneg.cli import app

    out = tmp_path / "cli-export"
    args = ["export", "--model-dir", str(query_dir), "--out", str(out), "--no-dev", "--no-fusion"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "document encoder" in text and "doc_model.int8.onnx" in text
    assert json.loads((out / "metadata.json").read_text())["document_encoder"] == base_dir.name
