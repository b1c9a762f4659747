"""benchmarks/serving.py end to end on the tiny auto export, in seconds (tiny matmuls, short levels): every code
path of the real benchmark (peaks per precision, the server's runtime selection, in-process runtimes, the real
server at 1/8/32 clients, the README block) and its report contract (issue #18)."""

from __future__ import annotations

import json
import re

import pytest
from _tiny_biencoder import tiny_bi_auto_export

from hardneg import hw
from hardneg.runtime_choice import native_bf16

pytestmark = [
    pytest.mark.adapter,
    pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning"),
]


def _value(data: dict, key: str):
    for part in re.findall(r'"[^"]+"|[^.]+', key):
        data = data[part.strip('"')]
    return data


def test_serving_benchmark_report_contract(tmp_path, tmp_path_factory, tiny_model_dir, tiny_data_dir):
    from benchmarks import serving as bench

    export = tiny_bi_auto_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)
    out, readme = tmp_path / "serving.json", tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bench.README_START}\nstale\n{bench.README_END}\n\nafter\n")
    args = [
        "--export-dir",
        str(export),
        "--data-dir",
        str(tiny_data_dir),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    args += ["--out", str(out), "--readme", str(readme), "--duration", "0.3", "--miss-requests", "1"]
    args += ["--hit-pool", "2", "--inproc-seconds", "0.1", "--peak-seconds", "0.05", "--peak-n", "128"]
    args += ["--compare-batching", "--compare-rounds", "1"]
    assert bench.main(args) == 0
    d = json.loads(out.read_text())
    assert d["status"] == "finished"

    # peaks: one per precision, GOP/s, or absent with the reason
    cpu = hw.cpu_info()
    assert set(d["peaks"]) | set(d["peaks_absent"]) == {"fp32", "bf16", "int8"}
    assert not set(d["peaks"]) & set(d["peaks_absent"])
    assert all(isinstance(v, float) and v > 0 for v in d["peaks"].values())
    assert ("bf16" in d["peaks"]) is native_bf16(cpu)
    if "bf16" in d["peaks_absent"]:
        assert "no native bf16" in d["peaks_absent"]["bf16"]
    # cpu: model name and the flags that matter, from hardneg.hw
    assert d["cpu"]["model"] == cpu["model"] and d["cpu"]["flags"] == cpu["flags"]

    # selection: what the server does at load (params serve.runtime: auto)
    sel = d["selection"]
    assert sel["mode"] == "auto" and sel["seconds"] > 0
    timed = {k: c["p50_ms"] for k, c in sel["candidates"].items() if "p50_ms" in c}
    assert len(timed) >= 2 and timed[sel["chosen"]] == min(timed.values())

    # served: the chosen candidate, divided by the peak of its own precision
    s = d["served"]
    assert sel["chosen"] == f"{s['runtime']}/{s['precision']}" and s["variant"] == sel["variant"]
    row = d["runtimes"][f"{s['runtime']}_{s['precision']}"]
    assert s["inproc_miss_p50_ms"] == row["miss"]["p50_ms"] > 0
    assert s["fraction_of_peak"] == row["miss"]["fraction_of_peak"]
    assert s["fraction_of_peak"] == pytest.approx(row["miss"]["gops"] / d["peaks"][s["precision"]], abs=2e-3)
    for key, r in d["runtimes"].items():  # every runtime x precision by its own peak
        if isinstance(r, dict) and "miss" in r and r["precision"] in d["peaks"]:
            assert r["miss"]["fraction_of_peak"] == pytest.approx(
                r["miss"]["gops"] / d["peaks"][r["precision"]], abs=2e-3
            ), key

    # the HTTP part: 1/8/32 clients on the miss path (every request brings documents never seen), no errors
    for c in ("1", "8", "32"):
        lv = d["clients_miss"][c]
        assert lv["throughput_pairs_s"] > 0 and lv["errors"] == 0 and lv["ok"] >= int(c)
        assert d["clients"][c]["errors"] == 0
    assert d["http"]["server_reports"]["selection"]["mode"] == "auto"

    # batching across requests off and on, side by side: the same requests, the server's own batch counts
    b = d["batching"]
    assert b["window_ms"] > 0 and set(b["miss"]) == {"off", "on"}
    for label in ("off", "on"):
        assert all(b["miss"][label][c]["errors"] == 0 for c in ("1", "8", "32"))
        assert b[f"miss_8_vs_1_{label}"] > 0
    off, on = b["server_batches"]["off"], b["server_batches"]["on"]
    assert not off["enabled"] and off["batches"] == off["requests"]  # window 0: one request per scoring call
    assert on["enabled"] and on["requests"] == off["requests"]
    assert "miss_8_clients_>=2x_of_1" in d["targets"]

    # the README block: rewritten from this JSON, every number next to its key
    text = readme.read_text()
    assert "stale" not in text and text.endswith("after\n")
    block = text.split(bench.README_START)[1].split(bench.README_END)[0]
    refs = re.findall(r"`([a-z_0-9./\"]+)` = ([0-9][0-9.e+-]*[0-9])", block)
    assert len(refs) >= 12, block
    for key, shown in refs:
        assert float(shown) == pytest.approx(_value(d, key), rel=0.005, abs=0.0005), key
    assert f"served **{sel['chosen']}**" in block and "serve.runtime: auto" in block
    assert 'batching.miss.on."8".throughput_pairs_s' in block
