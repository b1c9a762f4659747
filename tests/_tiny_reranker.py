"""Shared by test_export / test_rerank / test_serving*: a briefly trained tiny CrossEncoder and its ONNX export,
built once per pytest session under the session's base temp folder (read-only: copy before modifying).

The tiny BERT from conftest is trained for a few dozen BCE steps on the fixture qrels so that it ranks positives
first: an untrained model scores every pair ~0.5, and int8 rounding then reorders candidates at random, which would
make the int8 MRR gate meaningless.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `serving/` is a top-level folder of the checkout, not part of the hardneg package
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FUSION_WEIGHT = 0.7
LINEAGE = {
    "data_version": "0123456789abcdef.dir",
    "git_commit": "feedface",
    "params_hash": "abcdef0123456789",
    "inputs": {"negatives_sha256": "n" * 64},
    "extra": {},
}
METRICS = {"test": {"mrr@10": 0.5}}


def fusion_of(model_dir: Path) -> Path:
    """The ``fusion.json`` of the tiny model's evaluation: a sibling folder, as `hardneg evaluate` writes it (the
    model folder itself is never written after training)."""
    return model_dir.parent / f"{model_dir.name}-eval" / "fusion.json"


def write_evaluation_of(model_dir: Path, fusion: dict) -> None:
    ev = fusion_of(model_dir).parent
    ev.mkdir(parents=True, exist_ok=True)
    (ev / "fusion.json").write_text(json.dumps(fusion), encoding="utf-8")
    (ev / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")


def trained_tiny_ce(base: Path, tiny_model_dir: Path, data_dir: Path, steps: int = 150) -> Path:
    out = base / "hardneg-tiny-ce"
    if (out / "config.json").exists():
        return out
    import torch
    from sentence_transformers import CrossEncoder

    from hardneg.data import load_dataset

    torch.manual_seed(0)
    rng = random.Random(0)
    ce = CrossEncoder(str(tiny_model_dir), num_labels=1, device="cpu")
    ds = load_dataset(data_dir)
    pos = [
        (ds.queries[q].text, ds.corpus[d].full_text)
        for split in ds.qrels.values()
        for q, docs in split.items()
        for d in docs
        if q in ds.queries and d in ds.corpus
    ]
    docs = [d.full_text for d in ds.corpus.values()]
    opt = torch.optim.AdamW(ce.model.parameters(), lr=5e-3)
    ce.model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model: one thread is ~10x faster than two fighting over a busy CPU
    for _ in range(steps):
        batch = rng.sample(pos, 8)
        pairs = batch + [(q, rng.choice(docs)) for q, _ in batch]
        labels = torch.tensor([1.0] * 8 + [0.0] * 8)
        feats = ce.tokenizer(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            padding=True,
            truncation=True,
            max_length=48,
            return_tensors="pt",
        )
        logits = ce.model(**feats).logits.squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    ce.model.eval()
    tmp = base / "hardneg-tiny-ce.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    ce.save_pretrained(str(tmp))
    from hardneg.model_card import ModelCard, write_card

    write_card(
        tmp, ModelCard.cross_encoder(48, "tiny-bert")
    )  # as the cross-encoder trainer does (trained at 48)
    (tmp / "lineage.json").write_text(json.dumps(LINEAGE), encoding="utf-8")
    write_evaluation_of(out, {"weight": FUSION_WEIGHT, "first_stage": "dense"})
    tmp.rename(out)
    return out


def tiny_dev_set(data_dir: Path):
    from hardneg.export import DevSet

    return DevSet.from_beir(data_dir, "dev", depth=10)


# The int8 gate on the tiny model is loosened: its dev set has 8 queries (one swapped rank moves MRR@10 by >= 0.01).
# 0.25 still catches a broken int8 graph; the default 0.005 is meant for real dev sets, and test_export checks that
# the gate fails and raises on its own. (conftest's vocab is counted deterministically, so runs are reproducible.)
TINY_INT8_MAX_MRR_DROP = 0.25


def tiny_export(base: Path, tiny_model_dir: Path, data_dir: Path) -> Path:
    """The export of the trained tiny model (fp32 gate at its params default, int8 gate loosened: see above)."""
    out = base / "hardneg-tiny-export"
    if (out / "metadata.json").exists():
        return out
    from hardneg.export import export_model

    model_dir = trained_tiny_ce(base, tiny_model_dir, data_dir)
    export_model(
        model_dir,
        out,
        tiny_dev_set(data_dir),
        model_name="tiny-reranker",
        version="t1",
        parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
        fusion_file=fusion_of(model_dir),
        # one runtime: the serving tests compare the server with onnxruntime scores; runtime auto has its own tests
        serve_runtime="onnxruntime",
    )
    return out
