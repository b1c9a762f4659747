"""The corpus embedded once (issue #18, item 4): a ``tune: query`` bi-encoder's export ships the corpus's document
vectors (the base model's, from the embedding cache; ``corpus_vectors.npy``, fp16, keyed by the sha256 of the text)
checksummed and gated against the served document graph, and a fresh server puts them in its document cache: its
first request for corpus documents embeds no document and scores as the document graph would, within the gate."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from _tiny_biencoder import BI_MAX_LENGTH, trained_tiny_query_bi
from _tiny_reranker import TINY_INT8_MAX_MRR_DROP, tiny_dev_set

from hardneg.errors import GateFailedError, HardnegError
from hardneg.export import CorpusVectors, corpus_vectors_decision, export_model, mrr_drop_passes
from hardneg.fusion import text_digest, text_sha256
from hardneg.lineage import sha256_file
from hardneg.model_card import ModelCard, read_card
from hardneg.rerank import (
    CORPUS_VECTORS_FILE,
    EmbeddingCache,
    ExportIntegrityError,
    OnnxReranker,
    read_corpus_vectors,
    write_corpus_vectors,
)
from hardneg.settings import settings

pytestmark = pytest.mark.unit

QUERY = "does vitamin d improve bone density"


@pytest.fixture(scope="module")
def query_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return trained_tiny_query_bi(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def dataset(tiny_data_dir):
    from hardneg.data import load_dataset

    return load_dataset(tiny_data_dir)


@pytest.fixture(scope="module")
def corpus(query_dir, dataset, tmp_path_factory):
    """The base model's vectors of every corpus document, through the embedding cache the trainer filled (fp32)."""
    from hardneg.biencoder import BiEncoderConfig, document_vectors
    from hardneg.config import default_params

    card = read_card(query_dir)
    cfg = BiEncoderConfig.from_params(
        default_params(), base_model=card.document_encoder, max_length=card.max_length, bf16=False
    )
    stats: dict = {}
    cache = tmp_path_factory.getbasetemp() / "hardneg-tiny-query-bi.cache"
    vectors, ids = document_vectors(dataset, cfg, cache, stats=stats)
    assert stats["rows_encoded"] == 0  # the trainer's cache: the corpus is not embedded again
    texts = [dataset.corpus[d].full_text for d in ids]
    return CorpusVectors(texts, vectors, {"model": "tiny-bi", "precision": stats["precision"]})


@pytest.fixture(scope="module")
def v_export(tmp_path_factory, query_dir, corpus, tiny_data_dir):
    out = tmp_path_factory.mktemp("vectors-export") / "exp"
    export_model(
        query_dir,
        out,
        tiny_dev_set(tiny_data_dir),
        model_name="tiny-query-bi",
        version="v1",
        parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
        serve_runtime="onnxruntime",
        corpus_vectors=corpus,
    )
    return out


def test_the_server_cache_key_is_the_text_sha256_everywhere():
    texts = ["", "a", "Vitamin D and bone density", "Ünïcödé: naïve café, 東京 🧬", "tab\tnew\nline"]
    for t in texts:
        assert EmbeddingCache.key(t) == text_digest(t) == bytes.fromhex(text_sha256(t))
    # a lone surrogate (JSON allows one in a corpus file): hashed, not refused, and still the same key everywhere
    odd = "broken \ud800 text"
    assert EmbeddingCache.key(odd) == bytes.fromhex(text_sha256(odd))
    assert EmbeddingCache.key("a") != EmbeddingCache.key("a ")  # the exact text: no normalisation


def test_the_file_is_fp16_records_keyed_by_text_and_deduplicated(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    texts = ["one", "two", "one", "three"]  # "one" twice (two ids, one text): stored once, first row
    stats = write_corpus_vectors(tmp_path / "v.npy", texts, v)
    assert stats == {"count": 3, "dim": 8, "duplicates": 1}
    keys, vectors, total = read_corpus_vectors(tmp_path / "v.npy")
    assert total == 3 and vectors.dtype == np.float16 and vectors.shape == (3, 8)
    assert keys == [text_digest(t) for t in ("one", "two", "three")]
    np.testing.assert_allclose(vectors, v[[0, 1, 3]], atol=1e-3)
    keys2, vectors2, total2 = read_corpus_vectors(tmp_path / "v.npy", limit=2)
    assert keys2 == keys[:2] and len(vectors2) == 2 and total2 == 3
    with pytest.raises(ExportIntegrityError, match="dim 9"):
        read_corpus_vectors(tmp_path / "v.npy", dim=9)
    np.save(tmp_path / "plain.npy", v)
    with pytest.raises(ExportIntegrityError, match="expected records"):
        read_corpus_vectors(tmp_path / "plain.npy")
    with pytest.raises(HardnegError, match="non-finite"):
        write_corpus_vectors(tmp_path / "bad.npy", ["x"], np.full((1, 8), np.nan, dtype=np.float32))


def test_the_export_ships_checksummed_gated_vectors(v_export, corpus):
    meta = json.loads((v_export / "metadata.json").read_text())
    cv = meta["corpus_vectors"]
    n = len({text_digest(t) for t in corpus.texts})
    assert cv["file"] == CORPUS_VECTORS_FILE and cv["count"] == n and cv["dtype"] == "float16"
    assert cv["dim"] == meta["embedding_dim"] and cv["source"]["model"] == "tiny-bi"
    assert meta["files"][CORPUS_VECTORS_FILE] == sha256_file(v_export / CORPUS_VECTORS_FILE)
    keys, vectors, _ = read_corpus_vectors(v_export / CORPUS_VECTORS_FILE)
    row = {k: i for i, k in enumerate(keys)}
    for text, vec in zip(corpus.texts, corpus.vectors, strict=True):
        np.testing.assert_allclose(vectors[row[EmbeddingCache.key(text)]], vec, atol=1e-3)
    parity = json.loads((v_export / "parity.json").read_text())
    gate = parity["corpus_vectors"]
    assert gate["passed"] is True and gate["against"] == "fp32 document graph"
    assert gate["documents"] > 0 and gate["pairs"] > 0  # the dev sample's documents are corpus documents
    # fp32 vectors stored in fp16: the worst cosine change is fp16 rounding, far inside the gate
    assert 0 < gate["max_l2_diff"] < 2e-3 and gate["max_abs_cosine_diff"] <= gate["max_l2_diff"]
    assert gate["threshold_l2"] == 0.02
    # the int8 gate ranked the dev documents as served: from the shipped vectors
    assert parity["int8"]["documents"].startswith("shipped corpus vectors")
    assert parity["int8"]["document_graph"]["pairs"] == parity["sample"]["pairs"]


def test_a_fresh_reranker_serves_corpus_documents_from_the_shipped_vectors(v_export, corpus, monkeypatch):
    docs = corpus.texts[:6]
    plain = OnnxReranker(v_export, "fp32", doc_cache_size=1000, corpus_vectors=False)
    expected = plain.score(QUERY, docs)
    assert plain.cache_misses == len(set(docs))  # without the vectors every document is embedded

    r = OnnxReranker(v_export, "fp32", doc_cache_size=1000)
    n = len({text_digest(t) for t in corpus.texts})
    assert r.corpus_vectors["shipped"] == r.corpus_vectors["loaded"] == n
    assert r.cache_stats() == {"hits": 0, "misses": 0, "size": n, "capacity": 1000, "preloaded": n}
    calls = []
    real = r.scorer.doc_encoder.embed
    monkeypatch.setattr(r.scorer.doc_encoder, "embed", lambda texts: calls.append(list(texts)) or real(texts))
    got = r.score(QUERY, docs)
    assert calls == []  # the document graph was not run: every corpus document was a cache hit
    assert r.cache_hits == len(set(docs)) and r.cache_misses == 0
    # the same scores as the document graph within the export's gate (fp16 storage of fp32 vectors: ~1e-3)
    gate = json.loads((v_export / "parity.json").read_text())["corpus_vectors"]
    assert np.abs(got - expected).max() <= gate["threshold_l2"]
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # a document outside the corpus still goes through the document graph
    r.score(QUERY, ["a text that is in no corpus"])
    assert len(calls) == 1 and r.cache_misses == 1


def test_a_cache_smaller_than_the_corpus_holds_the_first_documents(v_export, corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="hardneg.rerank"):
        r = OnnxReranker(v_export, "fp32", doc_cache_size=3)
    n = len({text_digest(t) for t in corpus.texts})
    assert r.corpus_vectors["loaded"] == 3 and r.corpus_vectors["shipped"] == n
    assert f"3 of {n} shipped corpus vectors loaded" in caplog.text
    first = list(dict.fromkeys(corpus.texts))
    r.score(QUERY, first[:3])
    assert r.cache_hits == 3 and r.cache_misses == 0
    r.score(QUERY, [first[3]])  # not loaded: embedded on first sight, evicting the least recently used
    assert r.cache_misses == 1 and r.cache_size == 3
    off = OnnxReranker(v_export, "fp32", doc_cache_size=0)  # no cache: nothing to load
    assert off.corpus_vectors is None


def test_a_fresh_server_answers_corpus_documents_without_embedding_them(v_export, corpus):
    from fastapi.testclient import TestClient

    from serving.predictor import HardnegReranker, Limits
    from serving.server import create_app

    model = HardnegReranker("tiny-v", str(v_export), limits=Limits(8, 20_000, 1_000_000), doc_cache_size=1000)
    model.load()
    docs = corpus.texts[:4]
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        r = c.post("/v1/models/tiny-v:predict", json={"instances": [{"query": QUERY, "documents": docs}]})
        assert r.status_code == 200, r.text
        stats = c.get("/v2/models/tiny-v").json()["parameters"]["doc_cache"]
        assert stats["misses"] == 0 and stats["hits"] == len(set(docs)) and stats["preloaded"] > 0
        metrics = c.get("/metrics").text
        assert 'hardneg_doc_cache_misses_total{model="tiny-v"} 0.0' in metrics
        assert 'hardneg_doc_cache_preloaded{model="tiny-v"}' in metrics


def test_vectors_that_are_not_the_document_graph_fail_the_gate(query_dir, corpus, tiny_data_dir, tmp_path):
    rng = np.random.default_rng(1)
    wrong = corpus.vectors[rng.permutation(len(corpus.vectors))]  # each text with another document's vector
    bad = CorpusVectors(corpus.texts, wrong, corpus.source)
    with pytest.raises(GateFailedError, match=r"corpus vectors: max \|\|shipped - fp32 document graph\|\|"):
        export_model(
            query_dir,
            tmp_path / "exp",
            tiny_dev_set(tiny_data_dir),
            parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
            serve_runtime="onnxruntime",
            corpus_vectors=bad,
        )
    parity = json.loads((tmp_path / "exp" / "parity.json").read_text())
    assert parity["corpus_vectors"]["passed"] is False and parity["corpus_vectors"]["max_l2_diff"] > 0.1
    assert not (tmp_path / "exp" / "metadata.json").exists()


def test_without_a_dev_set_the_gate_samples_shipped_documents(query_dir, corpus, tmp_path):
    res = export_model(query_dir, tmp_path / "exp", None, serve_runtime="onnxruntime", corpus_vectors=corpus)
    gate = res.parity["corpus_vectors"]
    assert gate["passed"] is True and gate["pairs"] == 0  # the built-in pairs are no corpus documents
    assert (
        gate["documents"] == min(64, res.metadata["corpus_vectors"]["count"]) and "seeded" in gate["sample"]
    )


def test_a_tampered_vectors_file_is_refused(v_export, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(v_export, d)
    raw = bytearray((d / CORPUS_VECTORS_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (d / CORPUS_VECTORS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ExportIntegrityError, match=f"checksum mismatch for {CORPUS_VECTORS_FILE}"):
        OnnxReranker(d, "fp32")


def test_the_policy_ships_only_what_a_server_can_use():
    query = ModelCard.bi_encoder(BI_MAX_LENGTH, "base", "query")
    both = ModelCard.bi_encoder(BI_MAX_LENGTH, "base", "both")
    assert corpus_vectors_decision("auto", query, 100, 100)[0] is True
    ship, why = corpus_vectors_decision("auto", query, 101, 100)
    assert not ship and "does not fit serve.doc_cache_size (100)" in why
    assert corpus_vectors_decision(True, query, 101, 100)[0] is True  # shipped anyway: the server loads 100
    assert corpus_vectors_decision(False, query, 1, 100) == (False, "export.corpus_vectors: false")
    ship, why = corpus_vectors_decision("auto", both, 1, 100)
    assert not ship and "tune: both" in why
    with pytest.raises(HardnegError, match="export.corpus_vectors: true, but"):
        corpus_vectors_decision(True, both, 1, 100)


def test_the_export_refuses_vectors_for_a_model_without_a_document_graph(
    corpus, tmp_path, tmp_path_factory, tiny_model_dir, tiny_data_dir
):
    from _tiny_biencoder import trained_tiny_bi

    both = trained_tiny_bi(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)  # tune: both
    with pytest.raises(HardnegError, match="corpus vectors are shipped for a tune: query bi-encoder only"):
        export_model(both, tmp_path / "exp", None, corpus_vectors=corpus)


def test_an_mrr_drop_equal_to_the_threshold_passes():
    # SciFact dev, 100 queries, reciprocal ranks summing 0.5 lower: exactly the 0.005 threshold, which floating
    # point read as 0.0050000000000000044 and failed
    drop = 0.7380000000000001 - 0.7330000000000001
    assert drop > 0.005 and mrr_drop_passes(drop, 0.005)
    assert not mrr_drop_passes(0.0051, 0.005) and not mrr_drop_passes(1e-6, 0.0)


def test_the_stage_ships_what_the_embedding_cache_holds_under_auto(
    query_dir, tiny_data_dir, tmp_path, tmp_path_factory
):
    """``export.corpus_vectors: auto`` ships only what costs nothing (every vector in the embedding cache, the
    corpus fits the server's cache); ``true`` embeds what the cache lacks; ``false`` ships none."""
    from hardneg.config import default_params
    from hardneg.stages import export_corpus_vectors

    params = default_params()
    params["train"]["bf16"] = False  # the trainer's cache is fp32 (the cache key holds the precision)
    params["embed"]["cache_dir"] = str(tmp_path_factory.getbasetemp() / "hardneg-tiny-query-bi.cache")
    cv, why = export_corpus_vectors(tiny_data_dir, query_dir, settings(params))
    assert why is None and cv.source["from_cache"] == cv.source["documents"] == len(cv.texts) == 107
    params["export"]["corpus_vectors"] = False
    assert export_corpus_vectors(tiny_data_dir, query_dir, settings(params)) == (
        None,
        "export.corpus_vectors: false",
    )

    params["export"]["corpus_vectors"] = "auto"
    params["serve"]["doc_cache_size"] = 100  # 107 documents do not fit
    cv, why = export_corpus_vectors(tiny_data_dir, query_dir, settings(params))
    assert cv is None and "does not fit serve.doc_cache_size (100)" in why
    params["serve"]["doc_cache_size"] = 1000
    params["embed"]["cache_dir"] = str(tmp_path / "empty-cache")  # nothing cached: auto embeds nothing
    cv, why = export_corpus_vectors(tiny_data_dir, query_dir, settings(params))
    assert cv is None and "the embedding cache lacks corpus vectors" in why and str(tmp_path) not in why
    written = {p.name for p in (tmp_path / "empty-cache").rglob("*")}
    assert not written & {"key.json"} and not any(
        n.endswith(".npy") for n in written
    )  # auto wrote no cache entry
    cv, why = export_corpus_vectors(tmp_path / "no-data", query_dir, settings(params))
    assert cv is None and why == "auto: no corpus at no-data"
    params["export"]["corpus_vectors"] = True  # embeds the corpus (and caches it)
    cv, why = export_corpus_vectors(tiny_data_dir, query_dir, settings(params))
    assert why is None and cv.source["from_cache"] == 0 and len(cv.texts) == 107
