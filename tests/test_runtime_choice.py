"""hardneg.runtime_choice: which runtime x precision a node serves (candidates from the export's gates, the CPU's
native bf16, the timing loop's budget, the fastest by median), and the OpenVINO bf16 check that compared a type with
a string. No export here (tests/test_serving_runtime.py loads real ones)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _tiny_biencoder import AMX_CPU, AVX2_CPU

from hardneg import hw
from hardneg import runtime_choice as rc
from hardneg.errors import HardnegError
from hardneg.runtime_choice import Candidate

pytestmark = pytest.mark.unit

ORT32, ORT8 = Candidate("onnxruntime", "fp32", "fp32"), Candidate("onnxruntime", "int8", "int8")
OV32, OV8, OVBF = (
    Candidate("openvino", "fp32", "fp32"),
    Candidate("openvino", "int8", "int8"),
    Candidate("openvino", "fp32", "bf16"),
)


def _gate(c: Candidate, passed: bool = True, **extra) -> dict:
    return {"runtime": c.runtime, "variant": c.variant, "precision": c.precision, "passed": passed, **extra}


def _metadata(*gates: dict, default: Candidate = ORT8) -> dict:
    return {
        "served_variant": default.variant,
        "serving": {
            "policy": "auto",
            "runtime": default.runtime,
            "variant": default.variant,
            "precision": default.precision,
            "candidates": {f"{g['runtime']}/{g['precision']}": g for g in gates},
        },
    }


ALL_PASSED = _metadata(*(_gate(c) for c in (OV32, OVBF, ORT32, OV8, ORT8)))


class FakeClock:
    """A clock that only moves when a fake request runs (its cost in seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner(self, cost: float):
        def run() -> None:
            self.now += cost

        return run


def test_export_candidates_cover_every_runtime_and_precision_under_auto():
    assert rc.export_candidates("auto", ["fp32", "int8"]) == [ORT32, ORT8, OV32, OVBF, OV8]
    assert rc.export_candidates("auto", ["fp32"]) == [ORT32, OV32, OVBF]
    # an explicit runtime: that runtime at the variant's own precision (no bf16)
    assert rc.export_candidates("openvino", ["fp32"]) == [OV32]
    assert rc.export_candidates("onnxruntime", ["int8"]) == [ORT8]
    with pytest.raises(HardnegError, match="serve.runtime must be one of"):
        rc.export_candidates("tensorrt", ["fp32"])


def test_served_candidates_keep_the_passed_native_ones_default_first():
    meta = _metadata(
        _gate(OV32),
        _gate(OVBF),
        _gate(ORT32),
        _gate(OV8, passed=False, **{"mrr@10_drop": 0.3}),
        _gate(ORT8),
    )
    amx, why = rc.served_candidates(meta, AMX_CPU)
    assert amx[0] == ORT8  # the export's default first, then the recorded order
    assert set(amx) == {ORT8, OV32, OVBF, ORT32} and "failed its parity gate" in why["openvino/int8"]
    avx2, why = rc.served_candidates(meta, AVX2_CPU)
    assert (
        OVBF not in avx2
        and "no native bf16" in why["openvino/bf16"]
        and "AMD EPYC 7B12" in why["openvino/bf16"]
    )
    # an explicit variant / precision narrows the choice
    only_fp32, why = rc.served_candidates(meta, AMX_CPU, variant="fp32")
    assert set(only_fp32) == {OV32, OVBF, ORT32} and "not the fp32 graph" in why["onnxruntime/int8"]
    assert rc.served_candidates(meta, AMX_CPU, precision="bf16")[0] == [OVBF]
    # bf16 the export could not gate (no native bf16 where it ran): recorded as skipped, never served
    skipped = _metadata(_gate(ORT32), _gate(OVBF, passed=False, skipped="exporting machine: no native bf16"))
    cands, why = rc.served_candidates(skipped, AMX_CPU)
    assert cands == [ORT32] and why["openvino/bf16"].startswith("not gated at export: exporting machine")


def test_an_export_without_candidates_serves_its_one_recorded_runtime():
    old = {
        "served_variant": "fp32",
        "serving": {"runtime": "openvino", "variant": "fp32", "precision": "fp32"},
    }
    assert rc.served_candidates(old, AMX_CPU) == ([OV32], {})
    assert rc.export_policy(old) == "openvino"
    assert rc.served_candidates({"served_variant": "int8"}, AVX2_CPU) == ([ORT8], {})
    assert rc.export_policy({}) == "onnxruntime" and rc.export_policy(ALL_PASSED) == "auto"


def test_choose_fastest_by_median_ties_and_untimed_by_order():
    cands = [ORT8, OV32, OVBF]
    # a single slow outlier does not decide: medians 0.30, 0.25, 0.20
    timings = {ORT8.key: [0.3, 0.3, 0.3], OV32.key: [0.25, 5.0, 0.2], OVBF.key: [0.2, 0.2, 9.0]}
    assert rc.choose_fastest(cands, timings) == OVBF
    assert rc.choose_fastest(cands, {ORT8.key: [0.2], OV32.key: [0.2]}) == ORT8  # tie: the export's default
    assert rc.choose_fastest(cands, {}) == ORT8
    assert rc.choose_fastest(cands, {OV32.key: [9.0]}) == OV32  # only what was timed can win
    with pytest.raises(HardnegError):
        rc.choose_fastest([], {})


def test_measure_candidates_is_bounded_by_the_budget():
    clock = FakeClock()
    cost = {ORT8.key: 0.4, OV32.key: 0.4, OVBF.key: 0.1}
    prepared = []

    def prepare(c):
        prepared.append(c.key)
        return clock.runner(cost[c.key])

    runs, not_timed = rc.measure_candidates([ORT8, OV32, OVBF], prepare, budget_s=1.0, clock=clock)
    # ORT8: warm-up + 1 timed (0.8 s); OV32 still starts (0.8 < 1.0) and ends at 1.6; OVBF is never prepared
    assert prepared == [ORT8.key, OV32.key]
    assert runs == {ORT8.key: [pytest.approx(0.4)], OV32.key: [pytest.approx(0.4)]}
    assert "selection budget (1 s, serve.select_seconds) was spent" in not_timed[OVBF.key]
    assert clock.now <= 1.0 + 2 * 0.4 + 1e-9  # over by at most the warm-up and one call of the last started


def test_measure_candidates_one_at_a_time_up_to_max_runs_skipping_what_fails_to_load():
    import weakref

    clock = FakeClock()
    order: list[str] = []
    alive: list[weakref.ref] = []

    class Runner:  # holds "the sessions" of one candidate
        def __init__(self, key: str) -> None:
            self.key, self.run = key, clock.runner(0.001)

        def __call__(self) -> None:
            order.append(self.key)
            self.run()

    def prepare(c):
        assert all(r() is None for r in alive), "the previous candidate's sessions are still alive"
        if c == OVBF:
            raise RuntimeError("no CPU plugin")
        runner = Runner(c.key)
        alive.append(weakref.ref(runner))
        return runner

    runs, not_timed = rc.measure_candidates(
        [ORT8, OVBF, OV32], prepare, budget_s=10.0, max_runs=3, clock=clock
    )
    assert {k: len(v) for k, v in runs.items()} == {ORT8.key: 3, OV32.key: 3}
    assert clock.now < 1.0  # stopped at max_runs, long before the budget
    assert "failed to load on this node: RuntimeError: no CPU plugin" in not_timed[OVBF.key]
    assert order == [ORT8.key] * 4 + [OV32.key] * 4  # a warm-up + 3 timed calls each, one candidate at a time
    assert all(r() is None for r in alive)


def test_measure_candidates_share_the_budget_over_the_candidates_left():
    clock = FakeClock()
    runs, not_timed = rc.measure_candidates(
        [ORT8, OV32, OVBF], lambda c: clock.runner(0.1), budget_s=3.0, max_runs=100, clock=clock
    )
    # each gets ~1 s: a warm-up + ~10 timed calls, none hogs the budget, none is left out
    assert not not_timed and all(7 <= len(v) <= 11 for v in runs.values()), {
        k: len(v) for k, v in runs.items()
    }
    assert clock.now <= 3.0 + 0.2 + 1e-9


def test_select_runtime_times_nothing_for_a_single_candidate(monkeypatch):
    def never(*a, **k):
        raise AssertionError("a single candidate must not be timed")

    monkeypatch.setattr(rc, "measure_candidates", never)
    sel = rc.select_runtime([OV32], lambda c: lambda: None, budget_s=5.0, cpu=AVX2_CPU)
    assert sel.chosen == OV32 and sel.timings == {} and sel.mode == "auto"
    assert "the only candidate, not timed" in sel.log_line()


def test_selection_reports_timings_skips_and_cpu():
    timings = {ORT8.key: [0.569, 0.571], OVBF.key: [0.205, 0.2, 0.21]}
    sel = rc.Selection(
        "auto",
        OVBF,
        timings,
        {OV8.key: "failed its parity gate"},
        3.2,
        dict(AMX_CPU),
        10.0,
        (ORT8, OVBF, OV8),
    )
    d = sel.to_dict()
    assert d["chosen"] == "openvino/bf16" and (d["runtime"], d["precision"], d["variant"]) == (
        "openvino",
        "bf16",
        "fp32",
    )
    assert d["candidates"]["openvino/bf16"] == {
        "variant": "fp32",
        "p50_ms": 205.0,
        "runs_ms": [205.0, 200.0, 210.0],
    }
    assert d["candidates"]["onnxruntime/int8"]["p50_ms"] == 570.0
    assert d["candidates"]["openvino/int8"] == {"variant": "int8", "skipped": "failed its parity gate"}
    assert d["seconds"] == 3.2 and d["cpu"]["flags"] == AMX_CPU["flags"] and d["budget_seconds"] == 10.0
    line = sel.log_line()
    assert "\n" not in line and line.startswith("runtime auto: serving openvino/bf16 (fp32 graph)")
    assert "openvino/bf16 205.0, onnxruntime/int8 570.0" in line and "amx_bf16" in line


def test_probe_inputs_are_real_shaped_and_deterministic(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "cell", "protein", "gene", "binds", "a", "##ing"]
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    q, docs = rc.probe_inputs(tmp_path / "tokenizer.json")
    assert len(docs) == rc.PROBE_DOCUMENTS == 20
    assert len(q.split()) == rc.PROBE_QUERY_WORDS
    lengths = [len(d.split()) for d in docs]
    assert lengths == sorted(lengths) and lengths[0] == 107 and lengths[-1] == 321
    assert abs(np.mean(lengths) - rc.PROBE_DOC_WORDS) <= 1
    assert set(" ".join(docs).split()) <= {"the", "cell", "protein", "gene", "binds"}  # whole words only
    assert rc.probe_inputs(tmp_path / "tokenizer.json") == (q, docs)


def test_native_bf16_reads_the_cpu_flags():
    assert rc.native_bf16(AMX_CPU) and not rc.native_bf16(AVX2_CPU)
    assert rc.native_bf16({"flags": ["avx512_bf16"]})  # AMD Zen 4
    assert rc.cpu_skip_reason(OVBF, AVX2_CPU) is not None and rc.cpu_skip_reason(OVBF, AMX_CPU) is None
    assert rc.cpu_skip_reason(ORT8, AVX2_CPU) is None


def test_the_export_skips_the_bf16_gate_where_the_cpu_has_no_native_bf16(monkeypatch):
    import hardneg.export as ex

    monkeypatch.setattr(hw, "cpu_info", lambda: dict(AVX2_CPU))
    # returns before any graph is scored: no graph, scorer or dev set needed
    g = ex._candidate_gate(
        None, None, OVBF, {"int8": {"passed": True}}, [], np.zeros(0), 0, None, None, None, 1e-4, 0.005
    )
    assert g["passed"] is False and "no native bf16" in g["skipped"] and "AMD EPYC 7B12" in g["skipped"]
    # a failed int8 graph is not gated again on OpenVINO (the server never loads it)
    g = ex._candidate_gate(
        None, None, OV8, {"int8": {"passed": False}}, [], np.zeros(0), 0, None, None, None, 1e-4, 0.005
    )
    assert g["passed"] is False and "int8 graph failed" in g["skipped"]


# ------------------------------------------------------------------------------------ OpenVINO bf16 warning


def test_ov_type_name_reads_openvino_types():
    ov = pytest.importorskip("openvino")
    from hardneg.rerank import ov_type_name

    assert ov_type_name(ov.Type.bf16) == "bf16" and ov_type_name(ov.Type.f32) == "f32"
    assert str(ov.Type.bf16) == "<Type: 'bfloat16'>"  # why "bf16" in str(hint) was always False
    assert ov_type_name("bf16") == "bf16" and ov_type_name("f32") == "f32"


@pytest.mark.parametrize("ran, warns", [("bf16", False), ("f32", True)])
def test_openvino_warns_only_when_bf16_was_asked_for_and_not_run(monkeypatch, caplog, ran, warns):
    ov = pytest.importorskip("openvino")
    import hardneg.rerank as rr

    class Compiled:
        inputs = outputs = ()

        def get_property(self, name):
            assert name == "INFERENCE_PRECISION_HINT"
            return getattr(ov.Type, ran)  # what OpenVINO returns: an openvino.Type, not a string

    class Core:
        def compile_model(self, path, device, config):
            assert config["INFERENCE_PRECISION_HINT"] == "bf16"
            return Compiled()

    monkeypatch.setattr(rr, "_ov_core", lambda: Core())
    with caplog.at_level(logging.WARNING, logger="hardneg.rerank"):
        rr._OpenVinoSession("model.onnx", 1, "bf16")
    warned = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert bool(warned) is warns, warned
    if warns:
        assert "in f32, not bf16" in warned[0]
