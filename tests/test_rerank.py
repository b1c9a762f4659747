"""hardneg.rerank: torch-free scoring equal to CrossEncoder.predict, length batching, fusion, checksum checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _tiny_reranker import FUSION_WEIGHT, REPO, tiny_export, trained_tiny_ce

from hardneg.errors import HardnegError
from hardneg.fusion import fuse
from hardneg.rerank import ExportIntegrityError, OnnxReranker, verify_export_dir

pytestmark = pytest.mark.unit

QUERY = "does vitamin d improve bone density"
DOCS = [
    "Vitamin D supplementation had no effect on bone mineral density.",
    "a",
    "Cells are the basic unit of life " * 60,  # ~400 tokens: truncated to max_length (128)
    "Aspirin lowered the rate of myocardial infarction in a randomised trial.",
    "",
    "Ünïcödé: naïve café, 東京 🧬 ±≤≥",
    "bone density bone density vitamin",
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(
        str(trained_tiny_ce(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)), device="cpu"
    )


@pytest.fixture(scope="module")
def fp32(export_dir):
    return OnnxReranker(export_dir, "fp32")


def test_import_chain_has_no_torch():
    code = (
        "import sys, hardneg.rerank, hardneg.fusion, hardneg.lineage\n"
        "print('torch' in sys.modules)\n"
        "import hardneg.export  # torch is imported inside its functions only\n"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]


def test_fp32_scores_equal_crossencoder_predict(fp32, cross_encoder):
    ref = cross_encoder.predict([(QUERY, d) for d in DOCS], show_progress_bar=False)
    got = fp32.score(QUERY, DOCS)
    assert got.dtype == np.float32 and got.shape == (len(DOCS),)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.all((got > 0) & (got < 1))  # sigmoid inside the graph


def test_int8_scores_are_close_and_rank_alike(export_dir, fp32, tiny_data_dir):
    from scipy.stats import spearmanr

    from hardneg.data import iter_corpus, iter_queries

    int8 = OnnxReranker(export_dir, "int8")
    assert int8.variant == "int8"
    # the odd inputs (empty, one char, truncated, unicode) score close to fp32
    assert np.abs(fp32.score(QUERY, DOCS) - int8.score(QUERY, DOCS)).max() < 0.2
    # over every (query, document) pair of 8 fixture queries the scores agree (856 pairs, fp32 score std 0.075).
    # On an AVX2-only CPU (no VNNI) 8-bit weights gave Pearson 0.868 / Spearman 0.807 / max |diff| 0.14 (int16
    # saturation in onnxruntime's kernel); the export's 7-bit weights (reduce_range) give 0.9994 / 0.964 / 0.037.
    docs = [d.full_text for d in iter_corpus(tiny_data_dir / "corpus.jsonl")]
    queries = [q.text for q in iter_queries(tiny_data_dir / "queries.jsonl")][:8]
    a = np.concatenate([fp32.score(q, docs) for q in queries])
    b = np.concatenate([int8.score(q, docs) for q in queries])
    assert a.std() > 0.05  # the check below would be empty on flat scores
    assert np.abs(a - b).max() < 0.15
    assert np.corrcoef(a, b)[0, 1] > 0.98
    assert spearmanr(a, b)[0] > 0.9


def test_length_batching_restores_the_input_order(export_dir, fp32):
    rng = np.random.default_rng(0)
    docs = [" ".join(["cell"] * int(n)) for n in rng.integers(1, 150, size=23)]
    small = OnnxReranker(export_dir, "fp32", batch_size=3, max_batch_tokens=200)
    batches = small.scorer._batches(np.array([len(d.split()) + 3 for d in docs]))
    assert sorted(i for b in batches for i in b) == list(range(len(docs)))
    assert all(len(b) <= 3 for b in batches) and len(batches) > 8
    one_by_one = np.array([fp32.score(QUERY, [d])[0] for d in docs])
    np.testing.assert_allclose(small.score(QUERY, docs), one_by_one, atol=1e-5)
    np.testing.assert_allclose(fp32.score(QUERY, docs), one_by_one, atol=1e-5)


def test_rerank_fuses_with_the_weight_from_metadata(fp32):
    assert fp32.fusion_weight == FUSION_WEIGHT
    first_stage = np.linspace(1.0, 0.0, len(DOCS))
    scores, order = fp32.rerank(QUERY, DOCS, first_stage)
    expected = fuse(fp32.score(QUERY, DOCS), first_stage, FUSION_WEIGHT)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert list(order) == list(np.argsort(-expected, kind="stable"))
    plain, plain_order = fp32.rerank(QUERY, DOCS)
    np.testing.assert_allclose(plain, fp32.score(QUERY, DOCS), atol=1e-7)
    assert plain[plain_order[0]] == plain.max() and sorted(plain_order) == list(range(len(DOCS)))
    with pytest.raises(ValueError, match="3 values for 7 documents"):
        fp32.rerank(QUERY, DOCS, [1.0, 2.0, 3.0])


def test_empty_documents_and_pairs(fp32):
    assert fp32.score(QUERY, []).shape == (0,)
    scores, order = fp32.rerank(QUERY, [])
    assert scores.shape == (0,) and order.shape == (0,)
    np.testing.assert_allclose(
        fp32.score_pairs([QUERY, "x"], ["a", "b"]),
        [fp32.score(QUERY, ["a"])[0], fp32.score("x", ["b"])[0]],
        atol=1e-6,
    )


def test_metadata_properties_and_max_length(export_dir, fp32):
    assert fp32.version == "t1" and fp32.model_name == "tiny-reranker" and fp32.max_length == 128
    assert (
        fp32.kind == "cross-encoder"
        and fp32.score_name == "sigmoid"
        and fp32.metadata["kind"] == "cross-encoder"
    )
    assert fp32.cache_stats() is None and fp32.doc_cache_size == 0  # no document cache for pair scoring
    assert fp32.lineage["data_version"] == "0123456789abcdef.dir"
    short = OnnxReranker(export_dir, "fp32", max_length=16)
    assert short.max_length == 16
    # these differ only beyond 16 tokens: truncated away
    long_a, long_b = "cell " * 50 + "alpha", "cell " * 50 + "omega"
    s = short.score(QUERY, [long_a, long_b])
    assert s[0] == pytest.approx(s[1], abs=1e-6)
    with pytest.raises(HardnegError, match="max_length must be in"):
        OnnxReranker(export_dir, "fp32", max_length=4096)
    with pytest.raises(HardnegError, match="unknown variant"):
        OnnxReranker(export_dir, "fp16")


def test_the_default_variant_is_the_one_the_export_serves(export_dir, tmp_path):
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert OnnxReranker(export_dir).variant == meta["served_variant"]
    d = tmp_path / "old-export"
    shutil.copytree(export_dir, d)
    del meta["served_variant"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ExportIntegrityError, match="names no served variant"):
        OnnxReranker(d)
    assert OnnxReranker(d, "fp32").variant == "fp32"  # an explicit variant still works


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text() + " "),
            "checksum mismatch for tokenizer.json",
        ),
        (lambda d: (d / "model.int8.onnx").unlink(), "model.int8.onnx is missing"),
        (lambda d: (d / "metadata.json").unlink(), "no metadata.json"),
        (lambda d: (d / "metadata.json").write_text("{not json"), "not valid JSON"),
        (
            lambda d: (d / "metadata.json").write_text(json.dumps({"files": {"../x": "0"}})),
            "tokenizer.json is not listed",
        ),
    ],
    ids=["tampered-tokenizer", "missing-model", "no-metadata", "bad-metadata", "no-tokenizer-listed"],
)
def test_damaged_exports_are_refused(export_dir, tmp_path, damage, message):
    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    damage(d)
    with pytest.raises(ExportIntegrityError, match=message):
        OnnxReranker(d)


def test_verify_refuses_paths_outside_the_folder(export_dir, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    meta = json.loads((d / "metadata.json").read_text())
    meta["files"]["../outside.txt"] = "0" * 64
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ExportIntegrityError, match="outside the folder"):
        verify_export_dir(d)
    with pytest.raises(ExportIntegrityError, match="not found"):
        verify_export_dir(tmp_path / "missing")


def test_openvino_sessions_bound_their_per_shape_kernel_cache(tmp_path, monkeypatch):
    """OpenVINO keeps compiled kernels per input shape (CPU_RUNTIME_CACHE_CAPACITY, its default 5000): with varied
    query lengths the server's RSS crept at constant load (benchmarks/serving_memory.py). The served sessions set
    params serve.openvino_runtime_cache (the environment may override it; a bad value names the variable)."""
    pytest.importorskip("openvino")
    import onnx
    from onnx import TensorProto, helper

    from hardneg.config import default_params
    from hardneg.rerank import RUNTIME_CACHE_ENV, _OpenVinoSession, openvino_runtime_cache

    monkeypatch.delenv(RUNTIME_CACHE_ENV, raising=False)
    shipped = default_params()["serve"]["openvino_runtime_cache"]
    assert openvino_runtime_cache() == shipped < 5000
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    import hardneg.rerank as rerank

    real, seen = rerank._ov_core(), []

    class Recorder:  # OpenVINO accepts the property at compile time but does not read it back from a compiled model
        def compile_model(self, model, device, config):
            seen.append(config["CPU_RUNTIME_CACHE_CAPACITY"])
            return real.compile_model(model, device, config)  # and the real plugin accepts it

    monkeypatch.setattr(rerank, "_ov_core", Recorder)
    _OpenVinoSession(path, threads=1, precision="fp32")
    monkeypatch.setenv(RUNTIME_CACHE_ENV, "7")
    _OpenVinoSession(path, threads=1, precision="fp32")
    assert seen == [shipped, 7]
    for bad in ("-1", "many"):
        monkeypatch.setenv(RUNTIME_CACHE_ENV, bad)
        with pytest.raises(HardnegError, match=RUNTIME_CACHE_ENV):
            openvino_runtime_cache()


def test_the_server_hands_its_configured_kernel_cache_to_openvino(tmp_path, monkeypatch):
    """`python -m serving --config params.yaml`: the config's serve.openvino_runtime_cache reaches the OpenVINO
    sessions; a value the container already set in HARDNEG_OPENVINO_RUNTIME_CACHE wins."""
    import os

    import yaml

    import serving.__main__ as entry
    import serving.predictor as predictor
    import serving.server as server
    from hardneg.rerank import RUNTIME_CACHE_ENV, openvino_runtime_cache

    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump({"serve": {"openvino_runtime_cache": 9}}))
    seen = []

    class Model:  # what the sessions would read when the model loads
        def __init__(self, *args, **kwargs):
            seen.append(openvino_runtime_cache())

    monkeypatch.setattr(predictor, "HardnegReranker", Model)
    monkeypatch.setattr(server, "serve", lambda *a, **k: None)
    for preset, want in ((None, 9), ("3", 3)):
        env = {k: v for k, v in os.environ.items() if k != RUNTIME_CACHE_ENV}
        if preset is not None:
            env[RUNTIME_CACHE_ENV] = preset
        monkeypatch.setattr(os, "environ", env)
        assert entry.main(["--model_dir", str(tmp_path), "--config", str(cfg)]) == 0
        assert seen[-1] == want
