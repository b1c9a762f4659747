"""Serving runtime and robustness: OpenVINO vs onnxruntime on the same export (scores, the export's served-runtime
parity gate in metadata.json), thread count from the container's CPU limit, a model folder changed under a running
server (not ready, 503), and SIGTERM draining an in-flight request in a real server process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from _server_process import free_port, wait_ready
from _tiny_biencoder import tiny_bi_export, trained_tiny_bi
from _tiny_reranker import REPO, TINY_INT8_MAX_MRR_DROP, tiny_dev_set
from fastapi.testclient import TestClient

from hardneg.errors import HardnegError
from hardneg.hw import cgroup_cpu_quota, cpu_limit
from hardneg.rerank import OnnxReranker, check_precision, served_runtime

pytestmark = [
    pytest.mark.adapter,
    pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning"),
]

QUERY = "does vitamin d improve bone density"
DOCS = [
    "Vitamin D had no effect on bone mineral density.",
    "Aspirin lowered infarction rates.",
    "bone density",
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_bi_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def ov_export(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    """The tiny bi-encoder exported with params serve.runtime = openvino."""
    from hardneg.export import export_model

    base = tmp_path_factory.getbasetemp()
    out = base / "hardneg-tiny-bi-export-ov"
    if not (out / "metadata.json").exists():
        export_model(
            trained_tiny_bi(base, tiny_model_dir, tiny_data_dir),
            out,
            tiny_dev_set(tiny_data_dir),
            model_name="tiny-bi",
            version="b1",
            parity_int8_max_mrr_drop=TINY_INT8_MAX_MRR_DROP,
            serve_runtime="openvino",
        )
    return out


# ------------------------------------------------------------------------------------------------------- runtimes


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_openvino_scores_equal_onnxruntime_on_the_same_files(export_dir, variant):
    ort = OnnxReranker(export_dir, variant, runtime="onnxruntime", doc_cache_size=0)
    ov = OnnxReranker(export_dir, variant, runtime="openvino", doc_cache_size=0)
    assert (ov.runtime, ov.precision, ort.runtime) == ("openvino", variant, "onnxruntime")
    a, b = ort.score(QUERY, DOCS), ov.score(QUERY, DOCS)
    assert a.shape == b.shape == (3,)
    assert np.abs(a - b).max() < (1e-5 if variant == "fp32" else 0.05)
    # length-bucketed batching is the runtime-independent part: many texts of mixed length, tiny batches
    many = [d * (i % 4 + 1) for i, d in enumerate(DOCS * 12)]
    small = OnnxReranker(export_dir, variant, runtime="openvino", doc_cache_size=0, batch_size=3)
    # (int8: dynamic quantisation scales activations per batch, so the batch split moves scores slightly)
    tol = 1e-5 if variant == "fp32" else 2e-3
    np.testing.assert_allclose(small.score(QUERY, many), ov.score(QUERY, many), atol=tol)


def test_precision_and_runtime_choices_are_checked(export_dir):
    assert check_precision("openvino", "bf16", "fp32") == "bf16"
    for rt, p, v in (
        ("onnxruntime", "bf16", "fp32"),
        ("openvino", "bf16", "int8"),
        ("openvino", "fp16", "fp32"),
    ):
        with pytest.raises(HardnegError, match="not available"):
            check_precision(rt, p, v)
    with pytest.raises(HardnegError, match="unknown runtime"):
        OnnxReranker(export_dir, runtime="tensorrt")
    # an export that records no serving runtime (made before it existed) is served by onnxruntime
    assert served_runtime({}, None, None, "fp32") == ("onnxruntime", "fp32")
    rec = {"serving": {"runtime": "openvino", "variant": "fp32", "precision": "fp32"}}
    assert served_runtime(rec, None, None, "fp32") == ("openvino", "fp32")
    assert served_runtime(rec, "onnxruntime", None, "fp32") == ("onnxruntime", "fp32")


def test_export_gates_and_records_the_served_runtime(ov_export, export_dir):
    meta = json.loads((ov_export / "metadata.json").read_text())
    s = meta["serving"]
    assert s["runtime"] == "openvino" and s["variant"] == meta["served_variant"] and s["passed"] is True
    assert s["precision"] == meta["served_variant"]
    assert s["pairs"] > 0 and 0 <= s["max_abs_diff"] <= s.get("threshold", 1.0)
    assert "openvino" in meta["exporter"]
    parity = json.loads((ov_export / "parity.json").read_text())
    assert parity["serving"] == s
    # the server's default follows the export: OpenVINO here, onnxruntime for the default (onnxruntime) export
    assert OnnxReranker(ov_export, doc_cache_size=0).runtime == "openvino"
    assert json.loads((export_dir / "metadata.json").read_text())["serving"]["runtime"] == "onnxruntime"
    assert OnnxReranker(export_dir, doc_cache_size=0).runtime == "onnxruntime"


def test_served_runtime_gate_failure_blocks_the_export(
    tmp_path, tmp_path_factory, tiny_model_dir, tiny_data_dir, monkeypatch
):
    import hardneg.export as ex

    real = ex._served_runtime_gate

    def broken(*args, **kwargs):  # as if OpenVINO's numbers drifted from PyTorch's
        return real(*args, **kwargs) | {"max_abs_diff": 0.5, "threshold": 1e-4, "passed": False}

    monkeypatch.setattr(ex, "_served_runtime_gate", broken)
    src = trained_tiny_bi(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)
    with pytest.raises(ex.GateFailedError, match="served runtime openvino"):
        ex.export_model(src, tmp_path / "out", None, serve_runtime="openvino", serve_variant="fp32")
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_cpu_limit_follows_the_cgroup_quota(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    assert cpu_limit(v2) == min(2, len(os.sched_getaffinity(0)))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None and cpu_limit(v2) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 1.0 and cpu_limit(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(v1) is None
    assert cgroup_cpu_quota(tmp_path / "none") is None


def test_threads_default_to_the_cpu_limit(export_dir, monkeypatch):
    import hardneg.rerank as rr

    monkeypatch.setattr(rr, "cpu_limit", lambda: 1)
    r = OnnxReranker(export_dir, runtime="openvino", doc_cache_size=0)
    assert r.threads == 1
    assert r.scorer.encoder.session.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert OnnxReranker(export_dir, runtime="openvino", doc_cache_size=0, intra_op_threads=2).threads == 2


# ------------------------------------------------------------------------------------------- folder integrity


def test_a_model_folder_changed_under_the_server_is_not_served(export_dir, tmp_path, caplog):
    from serving.predictor import HardnegReranker, Limits
    from serving.server import create_app

    root = tmp_path / "export"
    shutil.copytree(export_dir, root)
    m = HardnegReranker("watched", str(root), limits=Limits(), doc_cache_size=0, watch_interval=0.0)
    body = {"instances": [{"query": QUERY, "documents": DOCS}]}
    with TestClient(create_app(m), raise_server_exceptions=False) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/models/watched:predict", json=body).status_code == 200
        # touched, same bytes: checksums re-verified, still served
        os.utime(root / "tokenizer.json", ns=(1, 1))
        assert c.get("/v2/models/watched/ready").status_code == 200
        assert c.post("/v1/models/watched:predict", json=body).status_code == 200
        # one byte of a graph changes: not ready, predictions refused (503), and it stays so
        onnx = root / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[-1] ^= 1
        onnx.write_bytes(bytes(data))
        assert c.get("/v2/models/watched/ready").status_code == 503
        assert c.get("/v2/health/ready").status_code == 503
        r = c.post("/v1/models/watched:predict", json=body)
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
        assert any(
            "changed under the running server (model.onnx)" in e and "checksum mismatch" in e for e in errors
        )
        onnx.write_bytes(bytes(data[:-1] + bytes([data[-1] ^ 1])))  # restored: still refused until a restart
        assert c.post("/v1/models/watched:predict", json=body).status_code == 503
        # the pod's readiness probe (k8s/, Dockerfile HEALTHCHECK): KServe alone would still answer 200 here
        assert c.get("/v2/health/ready").status_code == 503
        assert (
            c.get("/v2/health/live").status_code == 200
        )  # alive: no restart loop, just out of the endpoints


# -------------------------------------------------------------------------------------------------- SIGTERM drain

SLOW_SERVER = """
import sys, time
sys.path.insert(0, {repo!r})
from serving.predictor import HardnegReranker, Limits
from serving.server import serve

class Slow(HardnegReranker):
    def _score(self, reqs):
        time.sleep(3.0)  # a long request still running when SIGTERM arrives
        return super()._score(reqs)

serve(Slow("slow", {export!r}, limits=Limits(), doc_cache_size=0), http_port={port})
print("server returned", flush=True)
"""


def test_sigterm_drains_the_in_flight_request_then_exits(export_dir, tmp_path):
    port = free_port()
    script = tmp_path / "slow_server.py"
    script.write_text(textwrap.dedent(SLOW_SERVER).format(repo=str(REPO), export=str(export_dir), port=port))
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, tmp_path / "server.log")
        result: dict = {}

        def call() -> None:
            body = {"instances": [{"query": QUERY, "documents": DOCS}]}
            r = httpx.post(f"{base}/v1/models/slow:predict", json=body, timeout=60)
            result["status"], result["json"] = r.status_code, r.json()

        t = threading.Thread(target=call)
        t.start()
        time.sleep(1.0)  # the request is inside _score now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.HTTPError):  # no new connections while draining
            httpx.get(f"{base}/v2/health/live", timeout=2)
        t.join(30)
        assert result.get("status") == 200, (result, (tmp_path / "server.log").read_text())
        assert len(result["json"]["predictions"][0]["scores"]) == 3
        assert proc.wait(timeout=30) == 0, (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text, text


def test_served_metadata_names_the_runtime(ov_export):
    from serving.predictor import HardnegReranker, Limits
    from serving.server import create_app

    m = HardnegReranker("ovm", str(ov_export), limits=Limits(), doc_cache_size=0)
    with TestClient(create_app(m), raise_server_exceptions=False) as c:
        meta = c.get("/v2/models/ovm").json()
    assert meta["platform"] == "openvino"
    p = meta["parameters"]
    assert p["runtime"] == "openvino" and p["precision"] in ("fp32", "int8") and p["threads"] >= 1
    assert p["serving"]["passed"] is True


def test_readme_serving_numbers_come_from_the_json():
    """Every number in the README's serving block is a value of benchmarks/results/serving.json (by key)."""
    import re

    data = json.loads((REPO / "benchmarks" / "results" / "serving.json").read_text())
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- serving-numbers:start -->")[1].split("<!-- serving-numbers:end -->")[0]
    refs = re.findall(r"`([a-z_0-9.\"]+)` = ([0-9][0-9.e+-]*[0-9])", block)
    assert len(refs) >= 8, block
    for key, shown in refs:
        v: object = data
        for part in re.findall(r'"[^"]+"|[^.]+', key):
            v = v[part.strip('"')]  # type: ignore[index]
        assert isinstance(v, int | float), key
        assert float(shown) == pytest.approx(v, rel=0.005, abs=0.0005), (key, shown, v)
    assert data["served"]["runtime"] in block
    assert Path(REPO / "params.yaml").read_text().count(f"runtime: {data['served']['runtime']}") == 1
