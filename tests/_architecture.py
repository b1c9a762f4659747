"""The stage table of docs/architecture.md, parsed: what each stage reads and writes (shared by the doc test and the
stage-isolation test, which compares it with the folders a real run writes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


@dataclass
class Output:
    required: set[str]
    optional: set[str]
    open: bool  # free text too ("the SentenceTransformer files"): more files may be there


@dataclass
class Stage:
    name: str
    component: str
    reads: list[str]
    writes: dict[str, Output] = field(default_factory=dict)


def _output(text: str) -> Output:
    inside = " ".join(re.findall(r"\(([^)]*)\)", text))
    outside = re.sub(r"\([^)]*\)", "", text)
    names = lambda s: set(re.findall(r"`([^`]+)`", s))  # noqa: E731
    free = re.sub(r"`[^`]+`|[,;:+]", "", outside).strip()
    return Output(names(outside), names(inside), bool(free))


def _top_level(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def stages() -> list[Stage]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- stages:start", 1)[1].split("<!-- stages:end", 1)[0]
    out = []
    for line in block.splitlines()[3:]:
        if not line.startswith("|"):
            continue
        name, component, reads, writes = (c.strip() for c in line.strip("|").split("|"))
        st = Stage(name, component.strip("`"), [r.strip() for r in reads.split(",")])
        for seg in _top_level(writes, ";"):
            m = re.match(r"\s*`([a-z_]+)`\s*(?::\s*(.*)|\(.*\))?$", seg.strip(), re.S)
            if m:
                st.writes[m.group(1)] = _output(m.group(2) or "")
        out.append(st)
    return out


def folder_mismatch(out: Output, folder: Path) -> str | None:
    """Why the files of ``folder`` do not match ``out`` (None when they do); ``<slug>/`` matches any folder."""
    have = {p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()}
    dirs = {h for h in have if h.endswith("/")}
    want = {w for w in out.required if w != "<slug>/"} | (
        {next(iter(dirs))} if "<slug>/" in out.required and dirs else set()
    )
    missing = {w for w in want if w not in have and w.rstrip("/") not in have}
    globbed = {
        h for h in have for o in out.optional if re.fullmatch(o.replace(".", r"\.").replace("*", ".*"), h)
    }
    extra = (
        set()
        if out.open
        else have - want - globbed - ({d for d in dirs} if "<slug>/" in out.required else set())
    )
    if missing or extra:
        return f"{folder.name}: missing {sorted(missing)}, not documented {sorted(extra)}"
    return None
