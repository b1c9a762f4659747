"""Offline validation of rendered Kubernetes manifests (no cluster, no network; docs/stack.md section 6).

* Built-in kinds: ``kubernetes_validate.validate(doc, version, strict=True)`` against the bundled JSON schemas
  (strict: unknown fields fail). A kind without a schema is a failure, except InferenceService, which has none there.
* InferenceService (serving.kserve.io/v1beta1): a model walk over the generated ``kserve.models`` /
  ``kubernetes.client`` classes (their ``openapi_types`` / ``attribute_map``): unknown fields, wrong primitive types,
  missing required fields (the classes' own setters, e.g. ``predictor``) fail. Types neither package defines (e.g.
  ``ResourceQuantity``) are accepted as they are.

``validate_path(FILE_OR_DIR)``: a folder holding kustomization.yaml is rendered with ``kubectl kustomize`` first;
any other folder is read as *.yaml / *.yml files (Kustomization files themselves skipped).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hardneg.errors import HardnegError

K8S_VERSION = "1.31"
ISVC_API_VERSION = "serving.kserve.io/v1beta1"
ISVC_KIND = "InferenceService"
KUSTOMIZE_API_PREFIX = "kustomize.config.k8s.io/"

# Fields whose generated type is narrower than the API accepts: resource quantities may be strings or numbers.
_TYPE_OVERRIDES = {
    ("V1ResourceRequirements", "limits"): "dict(str, ResourceQuantity)",
    ("V1ResourceRequirements", "requests"): "dict(str, ResourceQuantity)",
}
_QUANTITY = "ResourceQuantity"


@dataclass(frozen=True)
class Problem:
    source: str  # file (or "<rendered DIR>") the document came from
    resource: str  # kind/name
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.resource}: {self.message}"


# --------------------------------------------------------------------------------------------------------- loading


def kubectl_path() -> str | None:
    return shutil.which("kubectl")


def kustomize_build(folder: str | os.PathLike) -> str:
    """``kubectl kustomize FOLDER`` (client-side rendering only: it never contacts a cluster)."""
    kubectl = kubectl_path()
    if kubectl is None:
        raise HardnegError(
            "kubectl not found: cannot render the kustomization (install kubectl, client only)"
        )
    try:
        res = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise HardnegError(f"kubectl kustomize {folder} failed: {e}") from None
    if res.returncode != 0:
        raise HardnegError(f"kubectl kustomize {folder} failed:\n{res.stderr.strip()}")
    return res.stdout


def parse_documents(text: str, source: str) -> list[tuple[str, Any]]:
    try:
        return [(source, d) for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise HardnegError(f"{source}: invalid YAML: {e}") from None


def load_documents(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """(source, document) pairs of a manifest file, a kustomization folder (rendered) or a folder of manifests."""
    p = Path(path)
    if not p.exists():
        raise HardnegError(f"no such file or folder: {p}")
    if p.is_file():
        return parse_documents(p.read_text(encoding="utf-8"), str(p))
    if any((p / n).exists() for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")):
        return parse_documents(kustomize_build(p), f"<kustomize {p}>")
    docs: list[tuple[str, Any]] = []
    for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
        docs += [
            (s, d)
            for s, d in parse_documents(f.read_text(encoding="utf-8"), str(f))
            if not _is_kustomization(d)
        ]
    if not docs:
        raise HardnegError(f"{p}: no manifests found")
    return docs


def _is_kustomization(doc: Any) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(KUSTOMIZE_API_PREFIX)


def _resource_name(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "<not a mapping>"
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


# ------------------------------------------------------------------------------------------------- built-in kinds


def validate_builtin(doc: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Strict JSON-schema validation of a built-in kind; a kind without a schema is an error."""
    import kubernetes_validate
    from kubernetes_validate.utils import InvalidSchemaError, VersionNotSupportedError

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(x) for x in e.path)
        return [f"{'$.' + where if where else '$'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [
            f"no schema for kind {e.kind} ({e.api_version}) in Kubernetes {e.version}: unknown kind or apiVersion"
        ]
    except (InvalidSchemaError, VersionNotSupportedError) as e:
        return [f"cannot validate: {e.message}"]
    return []


# ------------------------------------------------------------------------------------------------ InferenceService


@cache
def _model_namespaces() -> tuple[Any, ...]:
    # `import kserve` parses sys.argv at import time (docs/stack.md 2.4): import it with a clean argv.
    argv = sys.argv
    sys.argv = sys.argv[:1]
    try:
        import kserve.models as kserve_models
    except ImportError as e:
        raise HardnegError(
            f"validating an InferenceService needs kserve (pip install 'hardneg[serve]'): {e}"
        ) from None
    finally:
        sys.argv = argv
    import kubernetes.client as k8s_client

    return (kserve_models, k8s_client)


def _resolve(name: str) -> type | None:
    for ns in _model_namespaces():
        cls = getattr(ns, name, None)
        if isinstance(cls, type) and hasattr(cls, "openapi_types"):
            return cls
    return None


_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(([^,]+),\s*(.+)\)$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_primitive(value: Any, typ: str) -> str | None:
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": _is_int,
        "float": lambda v: _is_int(v) or isinstance(v, float),
        "bool": lambda v: isinstance(v, bool),
        "object": lambda v: True,  # IntOrString and friends
        "datetime": lambda v: isinstance(v, str | _dt.datetime),
        "date": lambda v: isinstance(v, str | _dt.date),
        _QUANTITY: lambda v: isinstance(v, str) or _is_int(v) or isinstance(v, float),
    }[typ]
    if ok(value):
        return None
    return f"expected {typ}, got {type(value).__name__} ({value!r})"


def _walk(value: Any, typ: str, path: str, errors: list[str]) -> None:
    if value is None:
        return  # an explicit null is "unset" for the API server
    if m := _LIST.match(typ):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list of {m.group(1)}, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, m.group(1), f"{path}[{i}]", errors)
        return
    if m := _DICT.match(typ):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(f"{path}: key {k!r} is not a string")
            _walk(v, m.group(2), f"{path}.{k}", errors)
        return
    if typ in ("str", "int", "float", "bool", "object", "datetime", "date", _QUANTITY):
        if (msg := _check_primitive(value, typ)) is not None:
            errors.append(f"{path}: {msg}")
        return
    cls = _resolve(typ)
    if cls is None:
        return  # a type neither client package defines: accepted as is (documented above)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({typ}), got {type(value).__name__}")
        return
    by_json = {j: attr for attr, j in cls.attribute_map.items()}
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            errors.append(f"{path}: unknown field {key!r} for {typ}")
            continue
        _walk(v, _TYPE_OVERRIDES.get((typ, attr), cls.openapi_types[attr]), f"{path}.{key}", errors)
        kwargs[attr] = v
    try:
        cls(
            **kwargs
        )  # the generated setters reject missing required fields (e.g. `predictor`, container `name`)
    except (ValueError, TypeError) as e:
        errors.append(f"{path}: {e}")


def validate_inference_service(doc: dict[str, Any]) -> list[str]:
    """Model-walk validation of an InferenceService against the kserve client classes; [] when valid."""
    errors: list[str] = []
    if doc.get("apiVersion") != ISVC_API_VERSION:
        errors.append(f"$.apiVersion: expected {ISVC_API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != ISVC_KIND:
        errors.append(f"$.kind: expected {ISVC_KIND!r}, got {doc.get('kind')!r}")
    _walk(doc, "V1beta1InferenceService", "$", errors)
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        errors.append("$.metadata.name: required")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        errors.append("$.spec: required (with a predictor)")
    elif not isinstance(spec.get("predictor"), dict):
        errors.append("$.spec.predictor: required")
    # dedupe, keep order (a missing predictor is reported by the walk and by the explicit check)
    return list(dict.fromkeys(errors))


# ---------------------------------------------------------------------------------------------------- entry points


def validate_document(doc: Any, version: str = K8S_VERSION) -> list[str]:
    if not isinstance(doc, dict):
        return [f"not a Kubernetes object (got {type(doc).__name__})"]
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.get(field), str) or not doc.get(field):
            return [f"$.{field}: required"]
    if doc["kind"] == ISVC_KIND and doc["apiVersion"].startswith("serving.kserve.io/"):
        return validate_inference_service(doc)
    return validate_builtin(doc, version)


def validate_documents(docs: Iterable[tuple[str, Any]], version: str = K8S_VERSION) -> list[Problem]:
    problems: list[Problem] = []
    for source, doc in docs:
        problems += [Problem(source, _resource_name(doc), msg) for msg in validate_document(doc, version)]
    return problems


def validate_path(path: str | os.PathLike, version: str = K8S_VERSION) -> tuple[int, list[Problem]]:
    """(number of documents, problems) for a file, a kustomization folder or a folder of manifests."""
    docs = load_documents(path)
    return len(docs), validate_documents(docs, version)
