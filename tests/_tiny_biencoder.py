"""Shared by the bi-encoder tests: a briefly trained tiny bi-encoder (SentenceTransformer: the conftest BERT + mean
Pooling + Normalize, saved with ``model.save`` + its model card) and its ONNX export, built once per pytest
session under the session's base temp folder (read-only: copy before modifying).

Trained for a few dozen in-batch-negative steps on the fixture qrels so that cosines rank positives first (an untrained
model's cosines are nearly flat, and int8 rounding would then reorder candidates at random).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from _tiny_reranker import LINEAGE, TINY_INT8_MAX_MRR_DROP, fusion_of, tiny_dev_set, write_evaluation_of

from hardneg.model_card import CARD_FILE

BI_FUSION_WEIGHT = 0.6
BI_MAX_LENGTH = 64


def build_bi_encoder(tiny_model_dir: Path, out: Path, pooling: str = "mean", normalize: bool = True) -> Any:
    """An untrained tiny SentenceTransformer (Transformer + Pooling(pooling) [+ Normalize]); not saved."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    tr = Transformer(str(tiny_model_dir), max_seq_length=BI_MAX_LENGTH)
    modules = [tr, Pooling(tr.get_embedding_dimension(), pooling)] + ([Normalize()] if normalize else [])
    return SentenceTransformer(modules=modules, device="cpu")


def save_bi_encoder(st: Any, out: Path, max_length: int = BI_MAX_LENGTH) -> Path:
    """``st.save(out)`` + the model card the bi-encoder trainer writes (``tune: both``)."""
    from hardneg.model_card import ModelCard, write_card

    st.save(str(out))
    write_card(out, ModelCard.bi_encoder(max_length, "tiny-bert", "both"))
    return out


def trained_tiny_bi(base: Path, tiny_model_dir: Path, data_dir: Path, steps: int = 120) -> Path:
    out = base / "hardneg-tiny-bi"
    if (out / CARD_FILE).exists():
        return out
    import torch

    from hardneg.data import load_dataset

    torch.manual_seed(0)
    rng = random.Random(0)
    st = build_bi_encoder(tiny_model_dir, out)
    ds = load_dataset(data_dir)
    pos = [
        (ds.queries[q].text, ds.corpus[d].full_text)
        for split in ds.qrels.values()
        for q, docs in split.items()
        for d in docs
        if q in ds.queries and d in ds.corpus
    ]
    opt = torch.optim.AdamW(st.parameters(), lr=5e-3)
    st.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a busy 2-core machine: one thread is much faster
    for _ in range(steps):
        batch = rng.sample(pos, 8)
        q = st(st.preprocess([b[0] for b in batch]))["sentence_embedding"]
        d = st(st.preprocess([b[1] for b in batch]))["sentence_embedding"]
        loss = torch.nn.functional.cross_entropy(
            20.0 * q @ d.T, torch.arange(len(batch))
        )  # in-batch negatives
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    st.eval()
    tmp = base / "hardneg-tiny-bi.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    save_bi_encoder(st, tmp)
    (tmp / "lineage.json").write_text(json.dumps(LINEAGE), encoding="utf-8")
    fusion = {"weight": BI_FUSION_WEIGHT, "first_stage": "bm25", "depth": 10, "score": "cosine"}
    write_evaluation_of(out, fusion)
    tmp.rename(out)
    return out


def trained_tiny_query_bi(base: Path, tiny_model_dir: Path, data_dir: Path) -> Path:
    """The query tower of :func:`trained_tiny_bi` (its base model) fine-tuned by the trainer with ``tune: query``
    against the base model's fixed document vectors (embedding cache ``base/hardneg-tiny-query-bi.cache``, fp32)."""
    out = base / "hardneg-tiny-query-bi"
    if (out / CARD_FILE).exists():
        return out

    import torch

    from hardneg.biencoder import BiEncoderConfig, document_vectors, train_biencoder
    from hardneg.config import default_params
    from hardneg.data import load_dataset

    base_dir = trained_tiny_bi(base, tiny_model_dir, data_dir)
    ds = load_dataset(data_dir)
    cfg = BiEncoderConfig.from_params(
        default_params(),
        base_model=str(base_dir),
        max_length=BI_MAX_LENGTH,
        max_steps=25,
        queries_per_step=8,
        negatives_per_query=1,
        lr=3e-3,
        bf16=False,  # AVX2-only CI CPUs emulate bf16
        seed=3,
        torch_threads=1,
        tune="query",
    )
    cfg = cfg.replace(trainable_layers=None)  # all layers (the tiny model has 2)
    threads = torch.get_num_threads()
    tmp = base / "hardneg-tiny-query-bi.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        vectors = document_vectors(ds, cfg, base / "hardneg-tiny-query-bi.cache")
        train_biencoder(ds, None, tmp, cfg, doc_vectors=vectors)
    finally:
        torch.set_num_threads(threads)
    tmp.rename(out)
    return out


def tiny_bi_export(base: Path, tiny_model_dir: Path, data_dir: Path) -> Path:
    """The export of the trained tiny bi-encoder (fp32 gate at its params default, int8 gate loosened as for the
    tiny cross-encoder: 8 dev queries). One runtime: the serving tests compare the server with onnxruntime scores;
    runtime auto has its own export (:func:`tiny_bi_auto_export`)."""
    return _export_tiny_bi(base, tiny_model_dir, data_dir, "hardneg-tiny-bi-export", "onnxruntime")


def _export_tiny_bi(base: Path, tiny_model_dir: Path, data_dir: Path, name: str, runtime: str) -> Path:
    """The trained tiny bi-encoder exported once per session into ``base/name`` with ``serve_runtime=runtime``."""
    out = base / name
    if (out / "metadata.json").exists():
        return out
    from hardneg.export import export_model

    model_dir = trained_tiny_bi(base, tiny_model_dir, data_dir)
    export_model(
        model_dir,
        out,
        tiny_dev_set(data_dir),
        model_name="tiny-bi",
        version="b1",
        parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
        fusion_file=fusion_of(model_dir),
        serve_runtime=runtime,
    )
    return out


def build_paths_in(export_dir: Path, build_dirs: list[Path]) -> list[str]:
    """Every string in an export's metadata.json, parity.json and ONNX metadata_props that is an absolute path or
    names one of ``build_dirs`` (where the export was built: the test's temp folder, the checkout, the venv), as
    ``"<file>:<key path>=<value>"``. A shipped artifact should have none."""
    import onnx

    needles = [str(d) for d in build_dirs] + [str(d.resolve()) for d in build_dirs]
    found: list[str] = []

    def walk(where: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{where}.{k}", v)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(f"{where}[{i}]", v)
        elif isinstance(obj, str):
            if obj.startswith("/") or any(n in obj for n in needles):
                found.append(f"{where}={obj}")

    for name in ("metadata.json", "parity.json"):
        walk(name, json.loads((export_dir / name).read_text(encoding="utf-8")))
    for f in sorted(export_dir.glob("*.onnx")):
        props = {p.key: p.value for p in onnx.load(str(f), load_external_data=False).metadata_props}
        walk(f.name, {k: json.loads(v) if k == "hardneg.lineage" else v for k, v in props.items()})
    return found


# an AMX node (Sapphire Rapids): native bf16 and int8 matrix units
AMX_CPU = {
    "model": "Intel(R) Xeon(R) Platinum 8480+",
    "cpus": 8,
    "flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"],
}
# an AVX2-only node (the EPYC our serving default was first measured on)
AVX2_CPU = {"model": "AMD EPYC 7B12", "cpus": 2, "flags": ["avx2"]}


def tiny_bi_auto_export(base: Path, tiny_model_dir: Path, data_dir: Path) -> Path:
    """The tiny bi-encoder exported with params ``serve.runtime: auto`` (the default) as on an AMX machine: every
    runtime x precision gated, OpenVINO bf16 included (``hw.cpu_info`` reads as :data:`AMX_CPU` during the export, so
    this holds on any test machine; where the CPU has no bf16, OpenVINO runs the bf16 gate in f32)."""
    import pytest

    from hardneg import hw

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hw, "cpu_info", lambda: dict(AMX_CPU))
        return _export_tiny_bi(base, tiny_model_dir, data_dir, "hardneg-tiny-bi-export-auto", "auto")
