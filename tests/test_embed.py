"""embed_texts: cache hit/miss, prompt in the key, resume after a crash, input order, backends (tiny BERT)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hardneg import embed as E
from hardneg.data import load_dataset
from hardneg.errors import ConfigError
from hardneg.models import ResolvedModel

pytestmark = pytest.mark.unit


def _cfg(model_dir, **kw) -> dict:
    return {
        "name": str(model_dir),
        "max_length": 64,
        "batch_size": 4,
        "query_prompt": "",
        "document_prompt": "",
        "weight": 1.0,
        **kw,
    }


@pytest.fixture()
def texts(tiny_data_dir) -> list[str]:
    ds = load_dataset(tiny_data_dir)
    return [d.full_text for d in ds.corpus.values()][:20]


@pytest.fixture()
def calls(monkeypatch):
    """Count TorchEncoder.encode calls (texts per call); set calls['fail_after'] to crash after N calls."""
    state = {"n": 0, "texts": 0, "fail_after": None}
    real = E.TorchEncoder.encode

    def counting(self, batch, prompt, batch_size):
        if state["fail_after"] is not None and state["n"] >= state["fail_after"]:
            raise KeyboardInterrupt("simulated crash")
        state["n"] += 1
        state["texts"] += len(batch)
        return real(self, batch, prompt, batch_size)

    monkeypatch.setattr(E.TorchEncoder, "encode", counting)
    yield state
    E.clear_encoders()


def test_vectors_are_normalised_float32_in_input_order(tmp_path, tiny_model_dir, texts, calls):
    v = E.embed_texts(texts, _cfg(tiny_model_dir), None, "document", progress=False)
    assert v.dtype == np.float32 and v.shape == (20, 32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # length-sorted batching must not change what each text gets
    rev = E.embed_texts(texts[::-1], _cfg(tiny_model_dir), None, "document", progress=False)
    assert np.allclose(rev[::-1], v, atol=1e-5)
    single = E.embed_texts([texts[7]], _cfg(tiny_model_dir), None, "document", progress=False)
    assert np.allclose(single[0], v[7], atol=1e-5)


def test_cache_hit_does_not_encode_or_load_the_model(tmp_path, tiny_model_dir, texts, calls):
    cache = tmp_path / "cache"
    st1: dict = {}
    a = E.embed_texts(texts, _cfg(tiny_model_dir), cache, "document", progress=False, chunk_size=8, stats=st1)
    assert calls["texts"] == 20 and st1["chunks"] == 3 and st1["chunks_cached"] == 0
    E.clear_encoders()
    calls["n"] = calls["texts"] = 0
    st2: dict = {}
    b = E.embed_texts(texts, _cfg(tiny_model_dir), cache, "document", progress=False, chunk_size=8, stats=st2)
    assert calls["n"] == 0 and st2["chunks_cached"] == 3 and st2["rows_encoded"] == 0
    assert not E._ENCODERS  # a full cache hit never loads the model
    assert np.array_equal(a, b)
    # appending texts re-uses the finished chunks (chunks are consecutive inputs)
    E.embed_texts(
        [*texts, "one more text"], _cfg(tiny_model_dir), cache, "document", progress=False, chunk_size=8
    )
    assert calls["texts"] == 5  # only the last (changed) chunk: texts 16..19 + the new one


def test_settings_outside_the_key_do_not_re_embed_but_prompt_and_length_do(
    tmp_path, tiny_model_dir, texts, calls
):
    cache = tmp_path / "cache"
    E.embed_texts(texts, _cfg(tiny_model_dir), cache, "query", progress=False)
    calls["n"] = 0
    # batch size, weight and the other kind's prompt are not part of the vectors
    E.embed_texts(
        texts,
        _cfg(tiny_model_dir, batch_size=7, weight=3.0, document_prompt="passage: "),
        cache,
        "query",
        progress=False,
    )
    assert calls["n"] == 0
    a = E.embed_texts(texts, _cfg(tiny_model_dir, query_prompt="query: "), cache, "query", progress=False)
    assert calls["n"] > 0
    calls["n"] = 0
    b = E.embed_texts(texts, _cfg(tiny_model_dir), cache, "query", progress=False)
    assert calls["n"] == 0 and not np.allclose(
        a, b
    )  # the prompt changes the vectors, and the old entry is kept
    E.embed_texts(texts, _cfg(tiny_model_dir, max_length=16), cache, "query", progress=False)
    assert calls["n"] > 0


def test_resume_after_crash_encodes_only_the_missing_chunks(tmp_path, tiny_model_dir, texts, calls):
    cache = tmp_path / "cache"
    cfg = _cfg(tiny_model_dir, batch_size=4)  # chunk_size 4 = one encode call per chunk, 5 chunks
    calls["fail_after"] = 2
    with pytest.raises(KeyboardInterrupt):
        E.embed_texts(texts, cfg, cache, "document", progress=False, chunk_size=4)
    done = list(cache.rglob("*.npy"))
    assert len(done) == 2 and not list(cache.rglob("*.tmp"))  # finished chunks only, no torn files
    calls.update(fail_after=None, n=0, texts=0)
    resumed = E.embed_texts(texts, cfg, cache, "document", progress=False, chunk_size=4)
    assert calls["n"] == 3 and calls["texts"] == 12
    fresh = E.embed_texts(texts, cfg, None, "document", progress=False)
    assert np.allclose(resumed, fresh, atol=1e-6)


def test_corrupt_chunk_is_recomputed(tmp_path, tiny_model_dir, texts, calls):
    cache = tmp_path / "cache"
    a = E.embed_texts(texts[:4], _cfg(tiny_model_dir), cache, "document", progress=False, chunk_size=4)
    (chunk,) = cache.rglob("*.npy")
    chunk.write_bytes(b"not a numpy file")
    calls["n"] = 0
    b = E.embed_texts(texts[:4], _cfg(tiny_model_dir), cache, "document", progress=False, chunk_size=4)
    assert calls["n"] == 1 and np.allclose(a, b, atol=1e-6)


def test_fingerprint_follows_weight_bytes_and_is_memoised(tmp_path, copy_model):
    m = copy_model()
    r = ResolvedModel("m", str(m), "torch")
    memo = tmp_path / "fp.json"
    fp1 = E.model_fingerprint(r, memo)
    assert json.loads(memo.read_text()) and E.model_fingerprint(r, memo) == fp1
    w = m / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert E.model_fingerprint(r, memo) != fp1


def test_bad_kind_and_empty_input(tiny_model_dir):
    with pytest.raises(ConfigError, match="kind"):
        E.embed_texts(["x"], _cfg(tiny_model_dir), None, "passage", progress=False)  # type: ignore[arg-type]
    v = E.embed_texts([], _cfg(tiny_model_dir), None, "query", progress=False)
    assert v.shape == (0, 32)
    E.clear_encoders()


def _export_onnx(model_dir, out_dir) -> None:
    """The tiny BERT as ONNX with two outputs: token states and the mean-pooled sentence embedding."""
    import torch
    from transformers import AutoModel

    class Both(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return h, (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    model = Both(AutoModel.from_pretrained(str(model_dir)).eval())
    ids = torch.ones((2, 8), dtype=torch.long)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(out_dir / "model.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state", "pooled"],
        dynamic_axes={
            n: {0: "b", 1: "s"}
            for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")
        }
        | {"pooled": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    shutil.copy(model_dir / "tokenizer.json", out_dir / "tokenizer.json")


@pytest.mark.filterwarnings("ignore::Warning")  # torch.onnx tracer chatter
def test_onnx_backend_matches_torch(tmp_path, tiny_model_dir, texts, monkeypatch):
    onnx_dir = tmp_path / "onnx"
    _export_onnx(tiny_model_dir, onnx_dir)
    ref = E.embed_texts(texts, _cfg(tiny_model_dir), None, "document", progress=False)
    # token-state output + our mean pooling (as resolve_model sets up a plain .onnx file)
    st: dict = {}
    v = E.embed_texts(
        texts, _cfg(onnx_dir / "model.onnx"), tmp_path / "c", "document", progress=False, stats=st
    )
    assert st["backend"] == "onnx"
    assert float((v * ref).sum(1).min()) > 0.9999
    # a graph that pools itself (pooling="none", like paraphrase-MiniLM-L3-v2's output "461")
    pooled = ResolvedModel(
        "pooled",
        str(onnx_dir / "model.onnx"),
        "onnx",
        tokenizer_path=str(onnx_dir),
        onnx_output="pooled",
        pooling="none",
    )
    monkeypatch.setattr(E, "resolve_model", lambda name: pooled)
    w = E.embed_texts(texts, _cfg("pooled"), None, "document", progress=False)
    assert float((w * ref).sum(1).min()) > 0.9999
    E.clear_encoders()


def test_embed_dataset_writes_per_model_outputs(tmp_path, tiny_data_dir, tiny_model_dir, calls):
    ds = load_dataset(tiny_data_dir)
    params = {
        "embed": {
            "cache_dir": str(tmp_path / "cache"),
            "chunk_size": 64,
            "bf16": True,
            "models": [_cfg(tiny_model_dir)],
        }
    }
    top = E.embed_dataset(ds, params, tmp_path / "emb", progress=False)
    slug = top["models"][0]
    mdir = tmp_path / "emb" / slug
    D, Q = np.load(mdir / "corpus.npy"), np.load(mdir / "queries.npy")
    ids = json.loads((mdir / "ids.json").read_text())
    man = json.loads((mdir / "manifest.json").read_text())
    assert D.shape == (len(ds.corpus), 32) and Q.shape == (len(ds.queries), 32)
    assert ids["doc_ids"] == list(ds.corpus) and ids["query_ids"] == list(ds.queries)
    assert man["precision"] == "bf16" and len(man["model_fingerprint"]) == 64 and man["dim"] == 32
    assert (tmp_path / "emb" / "lineage.json").exists()
    # re-running (e.g. after changing a mining threshold) is a pure cache hit
    calls["n"] = 0
    params["mine"] = {"perc_pos": 0.5}
    E.embed_dataset(ds, params, tmp_path / "emb2", progress=False)
    assert calls["n"] == 0
    assert np.array_equal(np.load(tmp_path / "emb2" / slug / "corpus.npy"), D)
