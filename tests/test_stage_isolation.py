"""Each stage owns its outputs: the pipeline's components run as a cluster runs them, every input artifact a fresh
copy (as KFP downloads it from the artifact store), and no stage may change a byte of an input. The export must
carry the fusion the evaluate stage chose, read from the evaluation artifact (never from the model folder)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hardneg.config import load_params

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
LINEAGE = {"data_version": "abc123.dir", "git_commit": "feedface", "params_hash": "p0"}


class Art:
    """A KFP artifact as a component sees it: a path, metadata, and metrics logging."""

    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}

    def log_metric(self, key, value) -> None:
        pass


def tree_hash(root: Path) -> str:
    """Names and bytes of every file under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


class Cluster:
    """Runs components with copied inputs and fails on any write into an input (copy or original)."""

    def __init__(self, root: Path):
        self.root, self.outputs, self.n = root, {}, 0

    def output(self, name: str) -> Art:
        p = self.root / "outputs" / name
        self.outputs[name] = p
        return Art(p)

    def run(self, component, *args):
        """``args``: an ``("in", name)`` tuple for an input artifact (passed as a fresh copy), anything else as is."""
        self.n += 1
        before = {n: tree_hash(p) for n, p in self.outputs.items() if p.exists()}
        copies, call = {}, []
        for a in args:
            if isinstance(a, tuple) and a[:1] == ("in",):
                src = self.outputs[a[1]]
                dst = self.root / f"pod{self.n}" / a[1]
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
                copies[a[1]] = (dst, tree_hash(dst))
                call.append(Art(dst))
            else:
                call.append(a)
        result = component.python_func(*call)
        for name, (dst, h) in copies.items():
            assert tree_hash(dst) == h, f"{component.python_func.__name__} wrote into its input '{name}'"
        for name, h in before.items():
            assert tree_hash(self.outputs[name]) == h, (
                f"{component.python_func.__name__} changed '{name}' of an earlier stage"
            )
        return result


@pytest.fixture()
def project_params(tmp_path, tiny_model_dir):
    params = load_params(REPO / "params.yaml")
    m = {"max_length": 64, "batch_size": 16, "query_prompt": "", "document_prompt": "", "weight": 1.0}
    params["embed"].update(
        cache_dir=str(tmp_path / "cache"), shards=1, models=[{"name": str(tiny_model_dir), **m}]
    )
    params["mine"].update(top_k=50, num_negatives=3)
    params["retrieve"].update(top_k=50, rerank_depth=10)
    params["train"].update(base_model=str(tiny_model_dir), max_steps=4, eval_every=2, time_cap_min=5)
    params["train"]["bi_encoder"].update(max_length=64, queries_per_step=4)
    params["export"].update(
        parity_int8_max_mrr_drop=1.0
    )  # a random tiny model: int8 noise is not the subject
    params["evaluate"].update(rerank_depths=[10])
    return params


def test_no_stage_writes_into_an_input_and_the_export_serves_the_evaluated_fusion(
    tmp_path, project_params, monkeypatch
):
    from components.embed import embed
    from components.evaluate import evaluate
    from components.export import export_onnx
    from components.mine import mine
    from components.reduce import reduce
    from components.retrieve import retrieve
    from components.train import train

    c = Cluster(tmp_path)
    pj, lj = json.dumps(project_params), json.dumps(LINEAGE)
    data = c.output("data")
    shutil.copytree(REPO / "tests" / "fixtures" / "tiny", data.path)
    item = {"model": project_params["embed"]["models"][0], "shard": 0, "num_shards": 1}
    D = ("in", "data")
    c.run(embed, D, pj, lj, item, c.output("embeddings"))
    reduce_in = [Art(Path(c.outputs["embeddings"]))]  # reduce takes a list (dsl.Collected)
    c.run(reduce, reduce_in, pj, lj, c.output("reduced"), c.output("reduce-metrics"))
    c.run(retrieve, D, ("in", "reduced"), pj, lj, c.output("retrieved"), c.output("retrieve-metrics"))
    R = ("in", "retrieved")
    c.run(mine, D, ("in", "reduced"), R, pj, lj, c.output("negatives"), c.output("mine-metrics"))
    c.run(train, D, R, ("in", "negatives"), pj, lj, c.output("model"), c.output("train-metrics"))
    args = (
        D,
        R,
        ("in", "model"),
        pj,
        lj,
        c.output("evaluation"),
        c.output("eval-metrics"),
        c.output("report"),
    )
    c.run(evaluate, *args)
    fusion = json.loads((Path(c.outputs["evaluation"]) / "fusion.json").read_text())
    assert not (Path(c.outputs["model"]) / "fusion.json").exists()
    c.run(
        export_onnx,
        D,
        R,
        ("in", "model"),
        ("in", "evaluation"),
        pj,
        lj,
        "v1",
        c.output("onnx_model"),
        c.output("served_evaluation"),
        c.output("served-metrics"),
    )
    meta = json.loads((Path(c.outputs["onnx_model"]) / "metadata.json").read_text())
    assert meta["fusion"]["weight"] == fusion["weight"] and meta["fusion"]["depth"] == fusion["depth"]
    served = json.loads((Path(c.outputs["served_evaluation"]) / "metrics.json").read_text())
    assert served["fusion_weight"] == fusion["weight"] and served["rerank_depth"] == fusion["depth"]
    # tune: query (the default): the export shipped the embed stage's document vectors (export.corpus_vectors: auto,
    # read from the shared embedding cache, not an input artifact), and the served evaluation embedded no document
    assert (
        meta["corpus_vectors"]["file"] == "corpus_vectors.npy"
        and meta["corpus_vectors"]["source"]["from_cache"]
    )
    assert served["doc_cache"]["misses"] == 0 and served["doc_cache"]["hits"] > 0

    # docs/architecture.md's stage table names exactly the files each stage's output folder holds
    from _architecture import folder_mismatch, stages

    checked = 0
    for stage in stages():
        for name, out in stage.writes.items():
            folder = Path(c.outputs.get(name, tmp_path / "none"))
            if folder.is_dir():
                assert folder_mismatch(out, folder) is None, (stage.name, folder_mismatch(out, folder))
                checked += 1
    assert (
        checked == 8
    )  # embeddings, reduced, retrieved, negatives, model, evaluation, onnx_model, served_evaluation

    # the check is real: an evaluate that writes into the model folder again is caught
    import hardneg.evaluate as ev_mod

    real = ev_mod.write_evaluation

    def into_the_model(ev, out_dir, lineage=None):
        out = real(ev, out_dir, lineage)
        model_copy = next(Path(tmp_path).glob(f"pod{c.n}/model"))
        shutil.copy2(Path(out_dir) / "fusion.json", model_copy / "fusion.json")
        return out

    monkeypatch.setattr(ev_mod, "write_evaluation", into_the_model)
    with pytest.raises(AssertionError, match="evaluate wrote into its input 'model'"):
        c.run(evaluate, *args)
