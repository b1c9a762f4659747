"""Which runtime x precision a server serves on the node it runs on (params ``serve.runtime: auto``, the default).

Kubernetes nodes differ: on an AVX2-only CPU onnxruntime may be fastest, on a Sapphire Rapids node (AMX: native bf16
and int8 matrix units) OpenVINO bf16 measured 2.8x faster than the variant chosen on the AVX2 machine (issue #18).
So the choice is made where the model is served:

1. ``hardneg export`` gates every candidate the server may choose (:func:`export_candidates`: each runtime x
   precision of each servable variant; OpenVINO bf16 only where the exporting CPU has native bf16, else recorded as
   skipped with the reason) and records them in ``metadata.json`` ``serving.candidates``.
2. At load, :func:`load_reranker` keeps the candidates that passed their gate and that this node runs natively
   (:func:`served_candidates`: no bf16 without ``amx_bf16`` / ``avx512_bf16``), times each on a real-shaped request
   (:func:`probe_inputs`: 1 query + 20 documents of SciFact's average length, the cache-miss path) one after the
   other within a time budget (params ``serve.select_seconds``; :func:`measure_candidates`) and serves the fastest
   by median (:func:`choose_fastest`). An explicit runtime wins: nothing is timed.

The result, a :class:`Selection`, is what the server logs (one INFO line), shows in ``GET /v2/models/<name>``
(``parameters.selection``) and exports on ``/metrics``. Torch-free (the serving image has no torch).
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hardneg import hw
from hardneg.errors import HardnegError
from hardneg.rerank import (
    ONNXRUNTIME,
    PRECISIONS,
    RUNTIMES,
    TOKENIZER_FILE,
    VARIANT_FILES,
    ExportIntegrityError,
    OnnxReranker,
    read_metadata,
    verify_export_dir,
)

log = logging.getLogger(__name__)

AUTO = "auto"
POLICIES = (AUTO, *RUNTIMES)  # params serve.runtime
Mode = Literal["auto", "explicit", "export"]
# the probe request: the cache-miss shape, 1 query + 20 documents; lengths of BEIR SciFact's averages
# (Thakur et al. 2021, table 1: queries 12.4 words, documents 213.6 words), the documents spread over 0.5x-1.5x
PROBE_DOCUMENTS = 20
PROBE_QUERY_WORDS = 12
PROBE_DOC_WORDS = 214
MAX_RUNS = 5  # timed calls per candidate at most (a fast model stops well before the budget)


@dataclass(frozen=True)
class Candidate:
    """One thing the server can serve: a runtime running one graph (``variant``) at one inference ``precision``."""

    runtime: str
    variant: str
    precision: str

    @property
    def key(self) -> str:
        """``runtime/precision`` (unique: a precision belongs to one graph per runtime)."""
        return f"{self.runtime}/{self.precision}"


def native_bf16(cpu: Mapping[str, Any]) -> bool:
    """Whether a CPU (:func:`hardneg.hw.cpu_info`) has native bf16 matrix instructions (AMX / AVX512-BF16)."""
    return any(f in (cpu.get("flags") or ()) for f in hw.BF16_FLAGS)


def cpu_skip_reason(c: Candidate, cpu: Mapping[str, Any]) -> str | None:
    """Why ``c`` is not worth running on ``cpu`` (``None``: it is). bf16 without native bf16 runs f32 or emulated."""
    if c.precision == "bf16" and not native_bf16(cpu):
        flags = " ".join(cpu.get("flags") or ()) or "none of note"
        return (
            f"no native bf16 on this CPU ({cpu.get('model', 'unknown')}; flags: {flags}; bf16 needs one of "
            f"{', '.join(hw.BF16_FLAGS)}): OpenVINO would run it in f32 or emulate it"
        )
    return None


def export_candidates(policy: str, variants: Sequence[str]) -> list[Candidate]:
    """What an export gates under params ``serve.runtime`` = ``policy`` for the servable ``variants``: ``auto`` ->
    every runtime x precision of each variant (:data:`hardneg.rerank.PRECISIONS`); an explicit runtime -> that runtime
    at each variant's own precision. The first is the default (onnxruntime under ``auto``)."""
    if policy not in POLICIES:
        raise HardnegError(f"serve.runtime must be one of {list(POLICIES)}, got {policy!r}")
    out: list[Candidate] = []
    for rt in RUNTIMES if policy == AUTO else (policy,):
        for v in variants:
            precisions = PRECISIONS[rt][v] if policy == AUTO else (v,)
            out += [Candidate(rt, v, p) for p in precisions]
    return out


def export_policy(metadata: Mapping[str, Any]) -> str:
    """The runtime policy an export was made with (``metadata.json`` ``serving.policy``; an export made before
    ``auto`` existed recorded one runtime, ``serving.runtime``, else none: onnxruntime)."""
    serving = metadata.get("serving") if isinstance(metadata.get("serving"), Mapping) else {}
    return str(serving.get("policy") or serving.get("runtime") or ONNXRUNTIME)


def served_candidates(
    metadata: Mapping[str, Any],
    cpu: Mapping[str, Any],
    *,
    variant: str | None = None,
    precision: str | None = None,
) -> tuple[list[Candidate], dict[str, str]]:
    """(the candidates this node may serve, {key: why another is not}) from ``metadata.json`` ``serving``: those
    that passed their export gate, run natively on ``cpu``, and match an explicit ``variant`` / ``precision``. The
    export's default candidate comes first."""
    serving = metadata.get("serving") if isinstance(metadata.get("serving"), Mapping) else {}
    recorded = serving.get("candidates")
    skipped: dict[str, str] = {}
    cands: list[Candidate] = []
    if isinstance(recorded, Mapping) and recorded:
        for key, gate in recorded.items():
            try:
                c = Candidate(str(gate["runtime"]), str(gate["variant"]), str(gate["precision"]))
            except (KeyError, TypeError):
                raise ExportIntegrityError(
                    f"metadata.json serving.candidates[{key!r}] must name runtime, variant and precision, got {gate!r}"
                ) from None
            if c.runtime not in RUNTIMES or c.variant not in VARIANT_FILES:
                raise ExportIntegrityError(f"metadata.json serving.candidates[{key!r}]: unknown {c}")
            if not gate.get("passed"):
                skipped[c.key] = (
                    f"not gated at export: {gate['skipped']}"
                    if gate.get("skipped")
                    else "failed its parity gate at export (parity.json serving.candidates)"
                )
                continue
            cands.append(c)
    else:  # an export made before candidates were recorded: its one served runtime
        v = str(metadata.get("served_variant") or "fp32")
        cands.append(
            Candidate(str(serving.get("runtime") or ONNXRUNTIME), v, str(serving.get("precision") or v))
        )
    default = (serving.get("runtime"), serving.get("variant"), serving.get("precision"))
    cands.sort(key=lambda c: (c.runtime, c.variant, c.precision) != default)  # stable: the default first
    kept: list[Candidate] = []
    for c in cands:
        if variant is not None and c.variant != variant:
            skipped[c.key] = f"not the {variant} graph asked for"
        elif precision is not None and c.precision != precision:
            skipped[c.key] = f"not the {precision} precision asked for"
        elif (why := cpu_skip_reason(c, cpu)) is not None:
            skipped[c.key] = why
        else:
            kept.append(c)
    return kept, skipped


def probe_inputs(
    tokenizer_path: str | os.PathLike, n_docs: int = PROBE_DOCUMENTS, seed: int = 0
) -> tuple[str, list[str]]:
    """A real-shaped request made of the tokenizer's own whole words: a query of :data:`PROBE_QUERY_WORDS` words and
    ``n_docs`` documents of 0.5x to 1.5x :data:`PROBE_DOC_WORDS` words (the model truncates them to its max_length,
    as it does real ones). The text content does not change the cost of a dense model, only its token count."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 3) or ["text"]
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, n)))

    spread = [0.5 + i / max(1, n_docs - 1) for i in range(n_docs)]
    return text(PROBE_QUERY_WORDS), [text(round(PROBE_DOC_WORDS * f)) for f in spread]


Runner = Callable[[], object]


def measure_candidates(
    candidates: Sequence[Candidate],
    prepare: Callable[[Candidate], Runner],
    budget_s: float,
    max_runs: int = MAX_RUNS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """({key: seconds of each timed call}, {key: why it was not timed}).

    One candidate at a time (its sessions are released before the next is compiled: five candidates' graphs at once
    could exceed a pod's memory limit): ``prepare(c)`` compiles it and returns a function running one request, which
    is called once to warm up (first-call allocations, shape specialisation), then timed at least once and again
    until ``max_runs`` calls or its share of the remaining budget (``budget_s`` split evenly over the candidates
    left). The first candidate is always timed; a later one is not started once the budget is spent (so the whole
    overruns it by at most one candidate's warm-up and call), nor timed when it fails to load on this node."""
    deadline = clock() + float(budget_s)
    runs: dict[str, list[float]] = {}
    not_timed: dict[str, str] = {}

    def timed(run: Runner) -> float:
        t = clock()
        run()
        return clock() - t

    for i, c in enumerate(candidates):
        now = clock()
        if runs and now >= deadline:
            not_timed[c.key] = (
                f"not timed: the selection budget ({budget_s:g} s, serve.select_seconds) was spent"
            )
            continue
        share_end = now + max(0.0, deadline - now) / (len(candidates) - i)
        try:
            run = prepare(c)
            run()  # warm-up
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run here is no candidate; the reason is kept
            not_timed[c.key] = f"failed to load on this node: {type(e).__name__}: {e}"
            continue
        times = runs[c.key] = [timed(run)]
        while len(times) < max_runs and clock() < share_end:
            times.append(timed(run))
        del run  # release this candidate's sessions before compiling the next
    return runs, not_timed


def choose_fastest(candidates: Sequence[Candidate], timings: Mapping[str, Sequence[float]]) -> Candidate:
    """The candidate with the lowest median time; ties and untimed candidates go by order (the export's default
    first). Nothing timed (a single candidate): the first."""
    if not candidates:
        raise HardnegError("no runtime candidate to choose from")
    order = {c.key: i for i, c in enumerate(candidates)}
    timed = [c for c in candidates if timings.get(c.key)]
    if not timed:
        return candidates[0]
    return min(timed, key=lambda c: (statistics.median(timings[c.key]), order[c.key]))


@dataclass(frozen=True)
class Selection:
    """What the server serves and why: ``mode`` ``auto`` (timed here), ``explicit`` (a runtime or precision was
    given) or ``export`` (an export made with one runtime); the timings (seconds per call) of every timed candidate
    and why the others were not timed."""

    mode: Mode
    chosen: Candidate
    timings: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cpu: dict[str, Any] = field(default_factory=dict)
    budget_s: float | None = None
    candidates: tuple[Candidate, ...] = ()

    def p50_ms(self, key: str) -> float | None:
        t = self.timings.get(key)
        return round(statistics.median(t) * 1000, 2) if t else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shown in the model metadata and written by benchmarks/serving.py (``selection``)."""
        cands: dict[str, Any] = {}
        for c in self.candidates or (self.chosen,):
            if c.key in self.timings:
                runs = self.timings[c.key]
                cands[c.key] = {
                    "variant": c.variant,
                    "p50_ms": self.p50_ms(c.key),
                    "runs_ms": [round(t * 1000, 2) for t in runs],
                }
            elif c.key in self.skipped:
                cands[c.key] = {"variant": c.variant, "skipped": self.skipped[c.key]}
            else:
                cands[c.key] = {"variant": c.variant, "timed": False}
        for key, why in self.skipped.items():
            cands.setdefault(key, {"skipped": why})
        return {
            "mode": self.mode,
            "chosen": self.chosen.key,
            "runtime": self.chosen.runtime,
            "precision": self.chosen.precision,
            "variant": self.chosen.variant,
            "seconds": round(self.seconds, 3),
            "budget_seconds": self.budget_s,
            "probe": f"1 query + {PROBE_DOCUMENTS} documents (cache miss path)",
            "candidates": cands,
            "cpu": dict(self.cpu),
        }

    def log_line(self) -> str:
        cpu = f"CPU {self.cpu.get('model', 'unknown')} [{' '.join(self.cpu.get('flags') or ())}]"
        head = f"runtime {self.mode}: serving {self.chosen.key} ({self.chosen.variant} graph)"
        if not self.timings:
            why = {
                "explicit": "as asked (--runtime/--precision)",
                "export": "as the export recorded",
                "auto": "the only candidate",
            }
            return f"{head}, {why[self.mode]}, not timed; {cpu}"
        timed = ", ".join(
            f"{k} {self.p50_ms(k)}" for k in sorted(self.timings, key=lambda k: self.p50_ms(k) or 0.0)
        )
        skipped = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "none"
        return (
            f"{head}, the fastest of {len(self.timings)} timed in {self.seconds:.1f} s "
            f"(p50 ms of 1 query + {PROBE_DOCUMENTS} documents: {timed}); skipped: {skipped}; {cpu}"
        )


def select_runtime(
    candidates: Sequence[Candidate],
    prepare: Callable[[Candidate], Runner],
    *,
    budget_s: float,
    cpu: Mapping[str, Any],
    skipped: Mapping[str, str] | None = None,
    max_runs: int = MAX_RUNS,
) -> Selection:
    """Time ``candidates`` (:func:`measure_candidates`; a single one is not timed) and choose the fastest."""
    t0 = time.perf_counter()
    why = dict(skipped or {})
    timings: dict[str, list[float]] = {}
    if len(candidates) > 1:
        timings, not_timed = measure_candidates(candidates, prepare, budget_s, max_runs)
        why.update(not_timed)
    chosen = choose_fastest(candidates, timings)
    return Selection(
        AUTO, chosen, timings, why, time.perf_counter() - t0, dict(cpu), float(budget_s), tuple(candidates)
    )


def load_reranker(
    export_dir: str | os.PathLike,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    variant: str | None = None,
    budget_s: float,
    **reranker_kwargs: Any,
) -> tuple[OnnxReranker, Selection]:
    """The reranker a server serves from ``export_dir``, and how it was chosen.

    ``runtime`` ``"auto"``, or ``None`` on an export made with ``serve.runtime: auto``: the fastest of
    :func:`served_candidates` on this node (restricted to ``variant`` / ``precision`` when given), timed within
    ``budget_s`` seconds. An explicit runtime (or an export that recorded one) is served as asked, untimed.
    ``reranker_kwargs`` go to :class:`~hardneg.rerank.OnnxReranker` (threads, doc cache...)."""
    if runtime is not None and runtime not in POLICIES:
        raise HardnegError(f"unknown runtime {runtime!r}: use one of {list(POLICIES)}")
    cpu = dict(hw.cpu_info())
    meta = read_metadata(export_dir)
    policy = runtime or export_policy(meta)
    if policy != AUTO:  # None: the runtime the export recorded
        if variant is None and precision is not None:  # the graph a precision runs on: int8 file, else fp32
            variant = "int8" if precision == "int8" else "fp32"
        r = OnnxReranker(export_dir, variant, runtime=runtime, precision=precision, **reranker_kwargs)
        chosen = Candidate(r.runtime, r.variant, r.precision)
        gated, _ = served_candidates(meta, cpu)
        if (meta.get("serving") or {}).get("candidates") and chosen not in gated:
            log.warning(
                "serving %s (%s graph) as asked, but the export did not gate it on this node "
                "(metadata.json serving.candidates: %s)",
                chosen.key,
                chosen.variant,
                [c.key for c in gated],
            )
        mode: Mode = "explicit" if runtime is not None or precision is not None else "export"
        return r, Selection(mode, chosen, cpu=cpu, candidates=(chosen,))
    cands, skipped = served_candidates(meta, cpu, variant=variant, precision=precision)
    if not cands:
        raise HardnegError(
            f"{export_dir}: no runtime candidate left to serve on this node: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    verify_export_dir(export_dir, sorted({c.variant for c in cands}))
    kwargs = {**reranker_kwargs, "verify": False}  # verified once, just above
    query, docs = probe_inputs(Path(export_dir) / TOKENIZER_FILE)

    def prepare(c: Candidate) -> Runner:
        probe = OnnxReranker(
            export_dir,
            c.variant,
            runtime=c.runtime,
            precision=c.precision,
            quiet=True,
            **{**kwargs, "doc_cache_size": 0},  # the cache-miss path: every document embedded
        )
        return lambda: probe.score(query, docs)

    sel = select_runtime(cands, prepare, budget_s=budget_s, cpu=cpu, skipped=skipped)
    c = sel.chosen
    r = OnnxReranker(export_dir, c.variant, runtime=c.runtime, precision=c.precision, **kwargs)
    return r, sel
