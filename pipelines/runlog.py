"""A quiet terminal for local pipeline runs (``hardneg pipeline run`` without ``--verbose``).

KFP's SubprocessRunner prints a lot for every task: a ``UserWarning`` about resource settings the local runner
ignores, the task's whole streamed output (faiss CPU-feature probing, sentence-transformers warnings, tqdm bars, our
own log lines), and every output artifact with its full metadata dictionary. :class:`RunLogFilter` wraps stdout and
stderr for the run: everything goes to the run's log file, and the terminal gets one start line and one finish line
per task (duration + the task's key number, read from the output metadata KFP prints), cache hits and skips, the
pipeline's final status and, when a task fails, the tail of that task's output (the error). On a terminal, long tasks
show their progress (``step 20/80``) on one line that is rewritten in place.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict, deque
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# KFP's local logger: "20:37:10.928 - INFO - Executing task 'fetch-data'" (task names in ANSI colour codes)
HEADER = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) - ([A-Z]+) - (.*)$")
EXECUTING = re.compile(r"^Executing task '([^']+)'")
FINISHED = re.compile(r"^Task '([^']+)' finished with status (\w+)")
OUTPUTS = re.compile(r"^Task '([^']+)' (outputs:|has no outputs)")
CACHE_HIT = re.compile(r"^Task (\S+) cache hit")
SKIPPED = re.compile(r"^Skipping (?:conditional )?task ([^\s:]+):?\s*\(?(.*?)\)?\.?$")
RETRY = re.compile(r"^Task (\S+) failed \(attempt")
PIPELINE_START = re.compile(r"^Running pipeline: '([^']+)'")
PIPELINE_END = re.compile(r"^Pipeline '([^']+)' finished with status (.*)$")
SEPARATOR = re.compile(r"^\s*-{20,}\s*$")
PROGRESS = re.compile(r"\bstep (\d+)/(\d+)\b.*")
META_ITEM = re.compile(r"'([^']+)': ('[^']*'|-?[0-9][0-9.eE+-]*|None|True|False)")
OUTPUT_PARAM = re.compile(r"^\s*Output: (.*)$")


def _num(v: Any) -> Any:
    """697.0 -> 697; other floats rounded for a terminal line."""
    if isinstance(v, float):
        return int(v) if v.is_integer() else round(v, 4)
    return v


def parse_outputs(text: str) -> dict[str, Any]:
    """The scalar items of the outputs block KFP prints for a task (``Output`` + every artifact's metadata); the
    first occurrence of a key wins (a Metrics artifact comes before nested summaries)."""
    vals: dict[str, Any] = {}
    for line in text.splitlines():
        m = OUTPUT_PARAM.match(line)
        if m and "Output" not in vals:
            vals["Output"] = _literal(m.group(1).strip())
        for key, raw in META_ITEM.findall(line):
            vals.setdefault(key, _literal(raw))
    return vals


def _literal(raw: str) -> Any:
    if raw in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[raw]
    if raw.startswith("'") and raw.endswith("'"):
        return raw[1:-1]
    try:
        return _num(float(raw))
    except ValueError:
        return raw


def key_number(task: str, v: dict[str, Any]) -> str:
    """The one number worth a glance for each task, from its printed outputs ('' when there is none)."""
    try:
        if task == "fetch-data" and v.get("data_version"):
            return f"{v.get('path', 'data')} @ {str(v['data_version'])[:8]}"
        if task == "validate-data" and "warnings" in v:
            return f"passed, {v['warnings']} warning(s)"
        if task == "embed" and "model" in v:
            shards = f" shard {int(v['shard']) + 1}/{v['num_shards']}" if "num_shards" in v else ""
            return f"{v.get('slug') or v['model']}{shards}, dim {v.get('dim', '?')}"
        if task == "reduce" and "n_components" in v:
            return f"{v.get('n_docs', '?')} docs, {v.get('input_dim', '?')} -> {v['n_components']} dims"
        if task == "mine" and "pairs" in v:
            with_neg = v["pairs"] - v.get("pairs_without_negative", 0)
            return f"{with_neg}/{v['pairs']} pairs with a negative"
        if task == "train" and "steps" in v:
            best = v.get("best_dev_mrr@10")
            return f"{v['steps']} steps" + (
                f", best dev MRR@10 {best:.4f}" if isinstance(best, float) else ""
            )
        if task == "evaluate" and "fusion/mrr@10" in v:
            served, base = v["fusion/mrr@10"], v.get("first_stage/mrr@10")
            gate = {True: ", gate passed", False: ", gate FAILED"}.get(v.get("Output"), "")
            if base is None:
                return f"served MRR@10 {served:.4f}{gate}"
            unseen = ""
            if "fusion/unseen/mrr@10" in v and "first_stage/unseen/mrr@10" in v:
                d = v["fusion/unseen/mrr@10"] - v["first_stage/unseen/mrr@10"]
                unseen = f", unseen {v['fusion/unseen/mrr@10']:.4f} ({d:+.4f})"
            return (
                f"served MRR@10 {served:.4f} vs first stage {base:.4f} ({served - base:+.4f}){unseen}{gate}"
            )
        if task == "export-onnx" and "fusion/mrr@10" in v:
            return f"served ONNX MRR@10 {v['fusion/mrr@10']:.4f}"
        if task == "register" and v.get("version"):
            return f"version {v['version']}"
        if task == "run-summary" and v.get("Output"):
            return str(v["Output"])
    except (TypeError, ValueError, KeyError):
        pass
    return ""


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class RunLogFilter:
    """A stdout/stderr stand-in for a quiet local run. ``full_log`` receives every byte; ``stream`` (the terminal)
    only the lines described in the module docstring. Thread-safe (ParallelFor tasks print from two threads)."""

    TAIL_LINES = 25  # a failed task's last output lines shown on the terminal

    def __init__(
        self, stream: Any, full_log: Any, *, log_path: str | None = None, progress: bool | None = None
    ):
        self.stream, self.full_log, self.log_path = stream, full_log, log_path
        if progress is None:
            progress = bool(getattr(stream, "isatty", lambda: False)())
        self.progress = progress
        self._buf = ""
        self._lock = threading.RLock()
        self._starts: dict[str, deque[float]] = defaultdict(deque)  # task -> start times (two embeds at once)
        self._ends: dict[str, deque[tuple[str, float]]] = defaultdict(deque)  # finished, outputs not yet read
        self._outputs: tuple[str, list[str]] | None = None  # task whose outputs block is being read
        self._tail: deque[str] = deque(maxlen=200)  # recent task output, for a failure
        self._progress_shown = False
        self._first_ts: float | None = None
        self._current = ""  # the task started last (its progress is shown)
        self.finished: list[str] = []  # task names in finish order (tests, summaries)

    # ------------------------------------------------------------------ file-like interface
    def write(self, text: str) -> int:
        with self._lock:
            self.full_log.write(text)
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                self._line(self._buf)
                self._buf = ""
            self._close_outputs()
            self._clear_progress()
            self.stream.flush()
            self.full_log.flush()

    def isatty(self) -> bool:
        return False  # keep colour codes and progress bars of libraries out of the (parsed) stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    # ------------------------------------------------------------------ parsing
    def _emit(self, text: str) -> None:
        self._clear_progress()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _task_line(self, hhmmss: str, task: str, what: str) -> None:
        self._emit(f"[{hhmmss}] {task:<14} {what}".rstrip())

    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw).rstrip("\r")
        m = HEADER.match(line)
        if m is None:
            if self._outputs is not None:
                if SEPARATOR.match(line):
                    self._close_outputs()
                else:
                    self._outputs[1].append(line)
                return
            self._task_output(line)
            return
        self._close_outputs()
        h, mi, s, ms, level, msg = m.groups()
        ts = int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000
        hhmmss = f"{h}:{mi}:{s}"
        if self._first_ts is None:
            self._first_ts = ts
        if mm := PIPELINE_START.match(msg):
            where = f"; full log: {self.log_path}" if self.log_path else ""
            self._emit(f"[{hhmmss}] pipeline '{mm.group(1)}' started{where}")
        elif mm := EXECUTING.match(msg):
            self._starts[mm.group(1)].append(ts)
            self._current = mm.group(1)
            self._tail.clear()
            self._task_line(hhmmss, mm.group(1), "started")
        elif mm := FINISHED.match(msg):
            task, status = mm.groups()
            if status == "SUCCESS":
                self._ends[task].append((hhmmss, ts))
            else:
                took = self._took(task, ts)
                self._task_line(hhmmss, task, f"{status}{took}")
                self._show_tail()
        elif mm := OUTPUTS.match(msg):
            task = mm.group(1)
            if mm.group(2) == "outputs:":
                rest = msg[mm.end() :]
                self._outputs = (task, [rest] if rest.strip() else [])
            else:
                self._finish(task, {}, (hhmmss, ts))
        elif mm := CACHE_HIT.match(msg):
            self._task_line(hhmmss, mm.group(1), "cached (KFP cache hit)")
            self.finished.append(mm.group(1))
        elif mm := SKIPPED.match(msg):
            self._task_line(hhmmss, mm.group(1), f"skipped ({mm.group(2)})")
        elif mm := RETRY.match(msg):
            self._task_line(hhmmss, mm.group(1), msg[len(f"Task {mm.group(1)} ") :])
        elif mm := PIPELINE_END.match(msg):
            total = (
                f" in {_fmt_seconds(self._delta(self._first_ts, ts))}" if self._first_ts is not None else ""
            )
            self._emit(f"[{hhmmss}] pipeline '{mm.group(1)}' finished: {mm.group(2)}{total}")
        elif level in ("ERROR", "CRITICAL"):
            self._emit(line)

    def _task_output(self, line: str) -> None:
        """A line of a task's streamed output (or other chatter): log only, kept for a failure's tail, and its
        progress (``step 20/80``) shown in place on a terminal."""
        body = line.strip()
        if not body or SEPARATOR.match(line) or body.startswith("Streamed logs"):
            return
        self._tail.append(line)
        if self.progress and (p := PROGRESS.search(body)):
            self._clear_progress()
            self.stream.write(f"{'':11}{self._current:<14} {p.group(0)[:90]}\r")
            self.stream.flush()
            self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self.stream.write("\r\x1b[K")
            self._progress_shown = False

    def _close_outputs(self) -> None:
        if self._outputs is not None:
            task, lines = self._outputs
            self._outputs = None
            self._finish(task, parse_outputs("\n".join(lines)))

    def _finish(self, task: str, values: dict[str, Any], now: tuple[str, float] | None = None) -> None:
        """The finish line, once the task's outputs are read; ``now``: the time of the line that ends them."""
        hhmmss, ts = self._ends[task].popleft() if self._ends[task] else (now or ("--:--:--", None))
        took = self._took(task, ts) if ts is not None else ""
        key = key_number(task, values)
        self._task_line(hhmmss, task, f"done{took}" + (f" · {key}" if key else ""))
        self.finished.append(task)

    def _took(self, task: str, ts: float) -> str:
        if not self._starts[task]:
            return ""
        return f" in {_fmt_seconds(self._delta(self._starts[task].popleft(), ts))}"

    @staticmethod
    def _delta(t0: float, t1: float) -> float:
        return t1 - t0 if t1 >= t0 else t1 + 86400 - t0  # across midnight

    def _show_tail(self) -> None:
        lines = [ln for ln in self._tail if ln.strip()]
        start = max(
            (i for i, ln in enumerate(lines) if "Traceback (most recent call last)" in ln), default=None
        )
        lines = lines[start:] if start is not None else lines
        for ln in lines[-self.TAIL_LINES :]:
            self._emit("    " + ln.strip())
        if self.log_path:
            self._emit(f"    (the task's whole output: {self.log_path})")
        self._tail.clear()
