"""Bi-encoder exports: the ONNX embedding graph (mean pooling + L2 norm inside), cosine parity with
SentenceTransformer, the int8 gate on the served (fused) ranking, metadata, refusals, and OnnxReranker's cosine
scoring with its LRU document-embedding cache."""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _tiny_biencoder import (
    BI_FUSION_WEIGHT,
    BI_MAX_LENGTH,
    build_bi_encoder,
    build_paths_in,
    save_bi_encoder,
    tiny_bi_export,
    trained_tiny_bi,
)
from _tiny_reranker import LINEAGE, REPO, TINY_INT8_MAX_MRR_DROP, fusion_of, tiny_dev_set
from typer.testing import CliRunner

from hardneg.errors import GateFailedError, HardnegError
from hardneg.export import DevSet, export_model, mrr_at_k
from hardneg.fusion import fuse
from hardneg.lineage import sha256_dir, sha256_file
from hardneg.model_card import CARD_FILE, ModelCard, write_card
from hardneg.rerank import OnnxReranker, verify_export_dir

pytestmark = pytest.mark.unit

QUERY = "does vitamin d improve bone density"
DOCS = [
    "Vitamin D supplementation had no effect on bone mineral density.",
    "a",
    "Cells are the basic unit of life " * 40,  # > max_length (64) tokens: truncated
    "Aspirin lowered the rate of myocardial infarction in a randomised trial.",
    "",
    "Ünïcödé: naïve café, 東京 🧬 ±≤≥",
    "bone density bone density vitamin",
]


@pytest.fixture(scope="module")
def bi_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return trained_tiny_bi(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def bi_export(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_bi_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def st(bi_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(bi_dir), device="cpu")


def torch_cosines(st, query, docs):
    emb = st.encode([query, *docs], convert_to_numpy=True, show_progress_bar=False).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb[1:] @ emb[0]


# ------------------------------------------------------------------------------------------------------- export


def test_export_passes_the_cosine_parity_gate_and_computes_the_int8_gate(bi_export):
    names = {p.name for p in bi_export.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "metadata.json", "parity.json"} <= names
    parity = json.loads((bi_export / "parity.json").read_text())
    assert parity["passed"] is True and parity["kind"] == "bi-encoder"
    assert parity["fp32"]["score"] == "cosine" and parity["fp32"]["threshold"] == 1e-4
    assert parity["fp32"]["max_abs_diff"] <= 1e-4 and parity["fp32"]["passed"] is True
    assert parity["sample"]["pairs"] == 80
    i8 = parity["int8"]
    assert i8["dev"] == {"source": i8["dev"]["source"], "queries": 8, "pairs": 80}
    assert i8["threshold_mrr_drop"] == TINY_INT8_MAX_MRR_DROP and i8["passed"] is True
    assert i8["mrr@10_drop"] == pytest.approx(i8["mrr@10_fp32"] - i8["mrr@10_int8"])
    assert i8["mrr@10_fp32"] > 0.5  # the trained tiny bi-encoder ranks positives first
    assert 0 < i8["max_abs_diff"] < 0.05  # int8 cosines are close, not identical


def test_metadata_kind_score_lineage_and_checksums(bi_export):
    meta = json.loads((bi_export / "metadata.json").read_text())
    assert meta["kind"] == "bi-encoder" and meta["score"] == "cosine"
    assert meta["model_name"] == "tiny-bi" and meta["version"] == "b1"
    assert meta["max_length"] == BI_MAX_LENGTH and meta["embedding_dim"] == 32 and meta["pooling"] == "mean"
    assert meta["outputs"] == ["embedding"] and meta["inputs"] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert meta["base_model"] == "tiny-bert"
    assert meta["fusion"] == {
        "weight": BI_FUSION_WEIGHT,
        "first_stage": "bm25",
        "depth": 10,
        "score": "cosine",
    }
    assert meta["served_variant"] in ("int8", "fp32") and meta["served_variant_policy"] == "auto"
    assert meta["lineage"]["data_version"] == LINEAGE["data_version"]
    assert len(meta["lineage"]["inputs"]["model_fingerprint"]) == 64
    written_last = (
        "metadata.json",
        "checksums.sha256",
    )  # metadata lists the rest; the folder checksums cover all
    assert sorted(meta["files"]) == sorted(p.name for p in bi_export.iterdir() if p.name not in written_last)
    for name, digest in meta["files"].items():
        assert sha256_file(bi_export / name) == digest
    assert verify_export_dir(bi_export, ["fp32", "int8"])["kind"] == "bi-encoder"
    for f in ("model.onnx", "model.int8.onnx"):
        props = {p.key: p.value for p in onnx.load(str(bi_export / f)).metadata_props}
        assert props["hardneg.kind"] == "bi-encoder" and props["hardneg.max_length"] == str(BI_MAX_LENGTH)


def test_graph_embeddings_are_unit_norm_and_equal_sentence_transformers(bi_export, st):
    from tokenizers import Tokenizer

    sess = ort.InferenceSession(str(bi_export / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in sess.get_inputs()] == [["batch", "sequence"]] * 3
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("embedding", ["batch", 32])]
    tok = Tokenizer.from_file(str(bi_export / "tokenizer.json"))
    tok.enable_truncation(BI_MAX_LENGTH)
    tok.enable_padding(pad_id=0)
    texts = [QUERY, *DOCS]
    encs = tok.encode_batch(texts)
    feed = {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
    }
    (emb,) = sess.run(None, feed)
    assert emb.shape == (len(texts), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = st.encode(texts, convert_to_numpy=True, show_progress_bar=False)  # Normalize module: unit norm
    np.testing.assert_allclose(emb, ref, atol=1e-5)  # padding inside a batch does not leak into the mean
    np.testing.assert_allclose(emb[1:] @ emb[0], torch_cosines(st, QUERY, DOCS), atol=1e-5)


def test_a_bi_encoder_without_normalize_still_serves_cosines(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    src = save_bi_encoder(build_bi_encoder(tiny_model_dir, tmp_path / "m", normalize=False), tmp_path / "m")
    res = export_model(src, tmp_path / "exp", None)
    assert res.parity["fp32"]["max_abs_diff"] <= 1e-4 and res.parity["int8"]["skipped"]
    raw = SentenceTransformer(str(src), device="cpu").encode(DOCS[:2], show_progress_bar=False)
    assert abs(np.linalg.norm(raw[0]) - 1.0) > 1e-3  # torch gives unnormalised embeddings here...
    enc = OnnxReranker(tmp_path / "exp", "fp32").scorer.encoder
    np.testing.assert_allclose(
        np.linalg.norm(enc.embed(DOCS[:2]), axis=1), 1.0, atol=1e-5
    )  # ...the graph not


def test_the_int8_gate_ranks_fused_cosines_as_served(bi_dir, tiny_data_dir, tmp_path):
    base = tiny_dev_set(tiny_data_dir)
    rng = np.random.default_rng(0)
    first_stage = {q: list(rng.normal(size=len(c))) for q, c in base.candidates.items()}
    dev = DevSet(base.queries, base.docs, base.candidates, base.qrels, "fused", first_stage)
    out = tmp_path / "exp"
    res = export_model(bi_dir, out, dev, parity_int8_max_mrr_drop=1.0, fusion_file=fusion_of(bi_dir))
    i8 = res.parity["int8"]
    assert i8["ranking"] == f"served fusion (w={BI_FUSION_WEIGHT})"
    for variant, key in (("int8", "mrr@10_int8"), ("fp32", "mrr@10_fp32")):
        served = OnnxReranker(out, variant)
        fused = {
            q: served.rerank(dev.queries[q], [dev.docs[d] for d in c], first_stage[q])[0]
            for q, c in dev.candidates.items()
        }
        assert i8[key] == pytest.approx(mrr_at_k(fused, dev))  # exactly what the server ranks
    with pytest.raises(GateFailedError, match="int8 MRR@10 drop"):
        export_model(
            bi_dir,
            tmp_path / "x",
            dev,
            parity_int8_max_mrr_drop=-1.0,
            serve_variant="int8",
            fusion_file=fusion_of(bi_dir),
        )
    assert not (tmp_path / "x" / "metadata.json").exists()


def test_a_failing_cosine_parity_gate_raises(bi_dir, tmp_path, monkeypatch):
    import hardneg.export as export_mod

    real = export_mod._torch_cosines
    monkeypatch.setattr(
        export_mod, "_torch_cosines", lambda st, pairs, *a, **kw: real(st, pairs, *a, **kw) + 0.01
    )
    with pytest.raises(GateFailedError, match=r"fp32 max \|cosine diff\| 0\.01 > 0\.0001"):
        export_model(bi_dir, tmp_path / "exp", None)
    assert not (tmp_path / "exp" / "metadata.json").exists()
    assert json.loads((tmp_path / "exp" / "parity.json").read_text())["fp32"]["passed"] is False


def test_the_export_names_no_path_of_the_machine_that_built_it(bi_export, bi_dir, tmp_path_factory, tmp_path):
    """metadata.json, parity.json and the graphs' lineage record the trained folder by its name and fingerprint:
    no absolute path, nothing under the temp folder it was built in, the checkout or the venv."""
    build_dirs = [tmp_path_factory.getbasetemp(), REPO, Path(sys.prefix)]
    assert build_paths_in(bi_export, build_dirs) == []
    meta = json.loads((bi_export / "metadata.json").read_text())
    assert meta["source"] == {"model": bi_dir.name, "model_fingerprint": sha256_dir(bi_dir)}
    assert json.loads((bi_export / "parity.json").read_text())["model"] == bi_dir.name
    # the check finds what it looks for: the absolute folder the export used to record
    planted = tmp_path / "planted"
    shutil.copytree(bi_export, planted)
    meta["source"]["model_dir"] = str(bi_dir)
    (planted / "metadata.json").write_text(json.dumps(meta))
    assert build_paths_in(planted, build_dirs) == [f"metadata.json.source.model_dir={bi_dir}"]


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_pooling_other_than_mean_is_refused_naming_the_folder(tiny_model_dir, tmp_path, mode):
    src = tmp_path / f"bi-{mode}"
    save_bi_encoder(build_bi_encoder(tiny_model_dir, src, pooling=mode), src)
    with pytest.raises(HardnegError, match=rf"{src}: pooling mode '{mode}' is not supported"):
        export_model(src, tmp_path / "exp", None)
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob(".exp.partial-*"))


def test_bad_model_card_and_fusion_are_refused(bi_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bi_dir, bad)
    (bad / CARD_FILE).write_text('{"kind": "colbert", "max_length": 64}')  # a hand-edited card
    with pytest.raises(HardnegError, match=re.escape(f"{bad / CARD_FILE}: unknown model kind 'colbert'")):
        export_model(bad, tmp_path / "out", None)
    write_card(bad, ModelCard.bi_encoder(1000, "tiny-bert", "both"))
    with pytest.raises(HardnegError, match=r"max_length 1000 must be in \[4, 128\]"):
        export_model(bad, tmp_path / "out", None)
    write_card(bad, ModelCard.bi_encoder(64, "tiny-bert", "both"))
    (tmp_path / "fusion.json").write_text('{"weight": 0.5, "score": "sigmoid"}')
    with pytest.raises(HardnegError, match="tuned on 'sigmoid' scores"):
        export_model(bad, tmp_path / "out", None, fusion_file=tmp_path / "fusion.json")
    with pytest.raises(HardnegError, match="no fusion.json .* run `hardneg evaluate`"):
        export_model(bad, tmp_path / "out", None, fusion_file=tmp_path / "missing")
    with pytest.raises(HardnegError, match="not a SentenceTransformer"):
        empty = tmp_path / "empty"
        empty.mkdir()
        write_card(empty, ModelCard.bi_encoder(64, "tiny-bert", "both"))
        export_model(empty, tmp_path / "out", None)


def test_fusion_score_must_match_the_kind(tmp_path):
    from hardneg.export import _read_fusion

    (tmp_path / "fusion.json").write_text('{"weight": 0.4, "first_stage": "bm25", "score": "cosine"}')
    assert _read_fusion(tmp_path, "bi-encoder") == {"weight": 0.4, "first_stage": "bm25", "score": "cosine"}
    with pytest.raises(HardnegError, match="a cross-encoder export serves cross-encoder scores"):
        _read_fusion(tmp_path, "cross-encoder")
    (tmp_path / "fusion.json").write_text('{"weight": 0.4, "first_stage": "bm25"}')  # as written before kinds
    assert _read_fusion(tmp_path, "cross-encoder") == {"weight": 0.4, "first_stage": "bm25"}


def test_cli_export_of_a_bi_encoder(bi_dir, tmp_path):
    from hardneg.cli import app

    out = tmp_path / "cli-export"
    args = ["export", "--model-dir", str(bi_dir), "--out", str(out), "--no-dev"]
    res = CliRunner().invoke(app, [*args, "--evaluation", str(tmp_path / "no-eval")])
    text = " ".join(res.output.split())
    assert (
        res.exit_code == 1 and "no fusion.json" in text and "hardneg evaluate" in text
    )  # never silently unfused
    res = CliRunner().invoke(app, [*args, "--evaluation", str(fusion_of(bi_dir).parent)])
    assert res.exit_code == 0, res.output
    assert "bi-encoder (score: cosine)" in " ".join(res.output.split())
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["kind"] == "bi-encoder" and meta["fusion"]["weight"] == BI_FUSION_WEIGHT
    res = CliRunner().invoke(app, [*args, "--no-fusion"])  # explicitly unfused
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metadata.json").read_text())["fusion"] is None


# ------------------------------------------------------------------------------------------------ OnnxReranker


def test_reranker_scores_are_the_cosines(bi_export, st):
    r = OnnxReranker(bi_export, "fp32", doc_cache_size=0)
    assert r.kind == "bi-encoder" and r.score_name == "cosine" and r.max_length == BI_MAX_LENGTH
    got = r.score(QUERY, DOCS)
    assert got.dtype == np.float32 and got.shape == (len(DOCS),)
    np.testing.assert_allclose(got, torch_cosines(st, QUERY, DOCS), atol=1e-4)
    assert len(set(np.round(got, 4))) > 3  # not flat
    # pairs with different queries; empty input
    np.testing.assert_allclose(
        r.score_pairs([QUERY, "aspirin"], DOCS[:2]), [got[0], r.score("aspirin", DOCS[1:2])[0]], atol=1e-6
    )
    assert r.score(QUERY, []).shape == (0,)
    scores, order = r.rerank(QUERY, [])
    assert scores.shape == (0,) and order.shape == (0,)
    # text past max_length tokens is truncated away, as in SentenceTransformer
    a, b = r.score(QUERY, ["cell " * 100 + "alpha", "cell " * 100 + "omega"])
    assert a == pytest.approx(b, abs=1e-6)


def test_rerank_fuses_cosines_with_the_exported_weight(bi_export):
    r = OnnxReranker(bi_export, "fp32", doc_cache_size=0)
    assert r.fusion_weight == BI_FUSION_WEIGHT
    fs = np.linspace(1.0, 0.0, len(DOCS))
    scores, order = r.rerank(QUERY, DOCS, fs)
    expected = fuse(r.score(QUERY, DOCS), fs, BI_FUSION_WEIGHT)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert list(order) == list(np.argsort(-expected, kind="stable"))


def test_length_batching_keeps_the_input_order(bi_export):
    docs = [" ".join(["cell"] * n) + f" {i}" for i, n in enumerate([1, 60, 3, 40, 2, 70, 5, 9, 33])]
    small = OnnxReranker(bi_export, "fp32", doc_cache_size=0, batch_size=2, max_batch_tokens=80)
    assert len(small.scorer.encoder._batches(np.array([len(d.split()) + 2 for d in docs]))) >= 5
    one_by_one = np.array([small.score(QUERY, [d])[0] for d in docs])
    np.testing.assert_allclose(small.score(QUERY, docs), one_by_one, atol=1e-5)


def test_the_document_cache_hits_on_repeats_and_gives_identical_scores(bi_export, monkeypatch):
    r = OnnxReranker(bi_export, "int8", doc_cache_size=100)
    assert r.doc_cache_size == 100 and (r.cache_hits, r.cache_misses, r.cache_size) == (0, 0, 0)
    embedded: list[int] = []
    real_embed = r.scorer.encoder.embed
    monkeypatch.setattr(
        r.scorer.encoder, "embed", lambda texts: embedded.append(len(texts)) or real_embed(texts)
    )
    first = r.score(QUERY, DOCS)
    assert (r.cache_hits, r.cache_misses, r.cache_size) == (0, len(DOCS), len(DOCS))
    assert sorted(embedded) == [1, len(DOCS)]  # the query, then the documents
    embedded.clear()
    second = r.score("another query entirely", DOCS)
    again = r.score(QUERY, DOCS)
    assert (r.cache_hits, r.cache_misses, r.cache_size) == (2 * len(DOCS), len(DOCS), len(DOCS))
    assert embedded == [1, 1]  # only the queries: every document came from the cache
    assert np.array_equal(first, again) and not np.array_equal(first, second)
    # a document repeated within one call is embedded and counted once
    r.score(QUERY, ["new doc", "new doc", DOCS[0]])
    assert (r.cache_hits, r.cache_misses, r.cache_size) == (2 * len(DOCS) + 1, len(DOCS) + 1, len(DOCS) + 1)
    assert r.cache_stats() == {"hits": 15, "misses": 8, "size": 8, "capacity": 100, "preloaded": 0}
    uncached = OnnxReranker(bi_export, "int8", doc_cache_size=0)
    np.testing.assert_array_equal(uncached.score(QUERY, DOCS), first)
    assert (uncached.cache_hits, uncached.cache_misses, uncached.cache_size) == (0, 0, 0)


def test_the_cache_evicts_the_least_recently_used_beyond_its_size(bi_export):
    r = OnnxReranker(bi_export, "fp32", doc_cache_size=3)
    a, b, c, d = "alpha doc", "beta doc", "gamma doc", "delta doc"
    r.score(QUERY, [a, b, c])
    r.score(QUERY, [a])  # a is now the most recent: b is the oldest
    r.score(QUERY, [d])  # evicts b
    assert r.cache_size == 3 and (r.cache_hits, r.cache_misses) == (1, 4)
    r.score(QUERY, [a, c, d])
    assert (r.cache_hits, r.cache_misses) == (4, 4)  # a, c and d survived
    r.score(QUERY, [b])
    assert (r.cache_hits, r.cache_misses, r.cache_size) == (4, 5, 3)  # b was evicted
    r.score(QUERY, [f"doc {i}" for i in range(10)])  # more distinct documents than the cache holds
    assert r.cache_size == 3


def test_the_cache_is_safe_under_concurrent_requests(bi_export):
    r = OnnxReranker(bi_export, "fp32", doc_cache_size=5)
    docs = [f"document number {i}" for i in range(12)]
    expected = OnnxReranker(bi_export, "fp32", doc_cache_size=0).score(QUERY, docs)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(6):
                sub = [docs[(k + j + i) % len(docs)] for i in range(4)]
                idx = [docs.index(x) for x in sub]
                np.testing.assert_allclose(r.score(QUERY, sub), expected[idx], atol=1e-6)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert r.cache_hits + r.cache_misses == 4 * 6 * 4 and r.cache_size == 5


def test_cache_size_defaults_to_params_and_unknown_kinds_are_refused(bi_export, tmp_path):
    from hardneg.config import default_params

    assert OnnxReranker(bi_export).doc_cache_size == default_params()["serve"]["doc_cache_size"] == 50000
    with pytest.raises(HardnegError, match="doc_cache_size must be >= 0"):
        OnnxReranker(bi_export, doc_cache_size=-1)
    d = tmp_path / "old"
    shutil.copytree(bi_export, d)
    meta = json.loads((d / "metadata.json").read_text())
    meta["kind"] = "sparse"
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(HardnegError, match="unknown model kind 'sparse'"):
        OnnxReranker(d)


# ------------------------------------------------------------------------------------------- per-query fusion gate


def test_the_seen_gate_travels_from_fusion_json_to_the_server(bi_dir, tiny_data_dir, tmp_path):
    """evaluate's gate (fusion.json: gate + the training positives' text hashes) is exported into a checksummed
    seen_documents.txt and applied per request: the reranker's best document is a training positive -> weight_high,
    otherwise weight_low."""
    from hardneg.export import SEEN_FILE, _read_fusion
    from hardneg.fusion import text_sha256

    src = tmp_path / "gated"
    shutil.copytree(bi_dir, src)
    plain = OnnxReranker  # scores to find the reranker's best document
    gate = {"signal": "seen", "threshold": None, "weight_high": 1.0, "weight_low": 0.0}
    fusion = {"weight": 0.5, "first_stage": "bm25", "score": "cosine", "gate": gate}
    ev = tmp_path / "gated-eval"
    ev.mkdir()
    (ev / "fusion.json").write_text(json.dumps(fusion))
    with pytest.raises(HardnegError, match="seen_documents_sha256"):
        _read_fusion(ev, "bi-encoder")
    (ev / "fusion.json").write_text(json.dumps({**fusion, "gate": {**gate, "weight_high": 3}}))
    with pytest.raises(HardnegError, match="gate must be"):
        _read_fusion(ev, "bi-encoder")
    # the seen set: one document text (which we make the best-scoring one below)
    probe = export_model(bi_dir, tmp_path / "probe", None, model_name="probe")
    cos = plain(probe.out_dir, "fp32", doc_cache_size=0).score(QUERY, DOCS)
    best = int(np.argmax(cos))
    (ev / "fusion.json").write_text(
        json.dumps({**fusion, "seen_documents_sha256": [text_sha256(DOCS[best])]})
    )
    res = export_model(
        src,
        tmp_path / "exp",
        tiny_dev_set(tiny_data_dir),
        model_name="gated",
        parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
        fusion_file=ev / "fusion.json",
    )
    meta = res.metadata
    assert meta["fusion"]["gate"] == gate and meta["fusion"]["seen_documents"] == {
        "file": SEEN_FILE,
        "count": 1,
    }
    assert "seen_documents_sha256" not in meta["fusion"] and SEEN_FILE in meta["files"]
    r = OnnxReranker(res.out_dir, "fp32", doc_cache_size=0)
    fs = np.linspace(1.0, 0.0, len(DOCS))
    scores, _ = r.rerank(QUERY, DOCS, fs)  # best document seen: weight_high = 1 -> the reranker's own order
    np.testing.assert_allclose(scores, fuse(r.score(QUERY, DOCS), fs, 1.0), atol=1e-6)
    others = [d for i, d in enumerate(DOCS) if i != best]
    scores, _ = r.rerank(
        QUERY, others, fs[: len(others)]
    )  # best document unseen: weight_low = 0 -> first stage
    np.testing.assert_allclose(scores, fuse(r.score(QUERY, others), fs[: len(others)], 0.0), atol=1e-6)
    # the hash file is covered by the export's checksums
    (res.out_dir / SEEN_FILE).write_text("0" * 64 + "\n")
    with pytest.raises(HardnegError):
        verify_export_dir(res.out_dir)
