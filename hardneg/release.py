"""Versioned canary rollouts of the reranker InferenceService, rendered as kustomize overlays (k8s/README.md).

``hardneg release`` writes ``<out>/`` (default ``k8s/releases/<version>/``; ``k8s/releases/<overlay>/<version>/`` for
an overlay other than prod) holding:

* ``kustomization.yaml``: the chosen overlay + the serving image tag + two patches;
* ``release-patch.yaml`` (JSON merge patch): label ``hardneg.io/model-version`` on the InferenceService and its pods,
  lineage annotations (``hardneg.io/data-version``, ``git-commit``, ``params-hash``, ``metrics`` as compact JSON) read
  from the exported model's ``metadata.json`` (or ``lineage.json``), and ``canaryTrafficPercent``;
* ``container-patch.yaml`` (JSON 6902, guarded by ``test`` ops): the ``STORAGE_URI`` the storage-initializer pulls;
* ``release.json`` (what was rendered, and why) and ``manifests.yaml`` (``kubectl kustomize`` output, validated offline
  by :mod:`hardneg.k8s_validate`).

Every successful render is appended to ``<releases_dir>/history.json``; the rollout state of an overlay is replayed
from it. KServe semantics used (Serverless mode, Knative revisions):

* canary N (1..99): the new revision gets N %, the last *rolled-out* revision keeps 100 - N %. KServe ignores the
  field while nothing has been rolled out yet, so a first release takes 100 % (recorded as such).
* promote: ``canaryTrafficPercent`` is removed (not set to 100), so the latest revision gets 100 % and becomes the
  rolled-out one; the next canary release needs no cleanup.
* rollback while a canary is in flight: the previous version's spec with ``canaryTrafficPercent: 0``; KServe keeps
  100 % on the last rolled-out revision, which *is* the previous version. Rollback of a promoted version: canary 0
  would pin traffic to the bad revision (it is now the rolled-out one), so the previous version is rendered without
  a canary and rolled out in full.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from hardneg.artifacts import METADATA_FILE
from hardneg.errors import HardnegError
from hardneg.k8s_validate import ISVC_API_VERSION, ISVC_KIND
from hardneg.lineage import LINEAGE_FILE, Lineage, read_lineage

ISVC_NAME = "hardneg-reranker"
ISVC_GROUP, ISVC_VERSION = ISVC_API_VERSION.split("/")
CONTAINER_NAME = "kserve-container"
LABEL_MODEL_VERSION = "hardneg.io/model-version"
ANN_DATA_VERSION = "hardneg.io/data-version"
ANN_GIT_COMMIT = "hardneg.io/git-commit"
ANN_PARAMS_HASH = "hardneg.io/params-hash"
ANN_METRICS = "hardneg.io/metrics"
LINEAGE_ANNOTATIONS = (ANN_DATA_VERSION, ANN_GIT_COMMIT, ANN_PARAMS_HASH, ANN_METRICS)
HISTORY_FILE = "history.json"
RELEASE_FILE = "release.json"
MANIFESTS_FILE = "manifests.yaml"
RECURRING_RUN_CONFIGMAP = "hardneg-recurring-run"
DEFAULT_OVERLAY = "prod"

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_OVERLAY = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


# ------------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class ReleaseSettings:
    """The ``release:`` section of params.yaml (paths relative to the working directory), typed and completed by
    :mod:`hardneg.settings` (the defaults live in params.yaml)."""

    k8s_dir: Path
    releases_dir: Path
    overlay: str
    image: str
    canary_percent: int
    storage_uri: dict[str, str]
    kubernetes_version: str

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> ReleaseSettings:
        from hardneg.settings import section

        r = section(params or {}, "release")  # unknown or wrongly typed keys: a ConfigError naming the key
        return cls(
            Path(r.k8s_dir),
            Path(r.releases_dir),
            r.overlay,
            r.image,
            r.canary_percent,
            dict(r.storage_uri),
            r.kubernetes_version,
        )


# ------------------------------------------------------------------------------------------------------- lineage


def read_model_lineage(model_dir: str | os.PathLike) -> Lineage:
    """Lineage of an exported model folder (``metadata.json`` -> ``lineage``) or of any artifact (``lineage.json``)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise HardnegError(f"model folder not found: {d}")
    meta_path = d / METADATA_FILE
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise HardnegError(f"{meta_path}: invalid JSON ({e})") from None
        lin = meta.get("lineage") if isinstance(meta, dict) else None
        if isinstance(lin, dict):
            try:
                return _with_metrics(Lineage.from_dict(lin), meta)
            except KeyError as e:
                raise HardnegError(f"{meta_path}: lineage lacks {e}") from None
        if not (d / LINEAGE_FILE).exists():
            raise HardnegError(f"{meta_path}: no 'lineage' object (re-export the model with hardneg export)")
    if (d / LINEAGE_FILE).exists():
        try:
            return read_lineage(d)
        except (KeyError, json.JSONDecodeError) as e:
            raise HardnegError(f"{d / LINEAGE_FILE}: invalid lineage ({e})") from None
    raise HardnegError(
        f"{d}: neither {METADATA_FILE} (exported ONNX folder) nor {LINEAGE_FILE}: not a hardneg model"
    )


def _with_metrics(lin: Lineage, meta: dict[str, Any]) -> Lineage:
    """hardneg export keeps the evaluation metrics next to the lineage (``metadata.json`` -> ``metrics``); they
    count as the lineage's ``extra.metrics`` when the lineage itself carries none."""
    if not lin.extra.get("metrics") and isinstance(meta.get("metrics"), dict) and meta["metrics"]:
        lin.extra["metrics"] = meta["metrics"]
    return lin


def model_version_of(model_dir: str | os.PathLike) -> str | None:
    """The ``version`` an export recorded in its metadata.json (None when absent)."""
    p = Path(model_dir) / METADATA_FILE
    try:
        v = json.loads(p.read_text(encoding="utf-8")).get("version")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return str(v) if v else None


def compact_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def lineage_annotations(lin: Lineage) -> dict[str, str]:
    return {
        ANN_DATA_VERSION: str(lin.data_version),
        ANN_GIT_COMMIT: str(lin.git_commit),
        ANN_PARAMS_HASH: str(lin.params_hash),
        ANN_METRICS: compact_json(lin.extra.get("metrics") or {}),
    }


# ------------------------------------------------------------------------------------------------------- releases


@dataclass
class Release:
    version: str
    overlay: str
    action: str  # canary | promote | rollback
    canary: int | None  # canaryTrafficPercent; None = field removed (latest revision gets 100 %)
    image: str  # image repository (tag below)
    image_tag: str | None  # None = the overlay's tag
    storage_uri: str
    annotations: dict[str, str]
    out_dir: str
    previous: str | None = None  # rollback: the version rolled back from
    effective_image: str | None = None  # the rendered container image (known when kubectl is present)
    traffic: str = ""
    rolled_out: str | None = None  # version holding the rolled-out revision after this release
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Release:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class RenderResult:
    release: Release
    out_dir: Path
    files: list[Path]
    rendered: bool  # False when kubectl is missing (kustomization written, not built or validated)
    documents: int = 0


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _LABEL_VALUE.match(version):
        raise HardnegError(
            f"invalid version {version!r}: it becomes a label value (1-63 chars: letters, digits, '.', '_', '-', "
            "starting and ending with a letter or digit)"
        )
    return version


def _check_overlay(k8s_dir: Path, overlay: str) -> Path:
    if not _OVERLAY.match(overlay or ""):
        raise HardnegError(f"invalid overlay name {overlay!r}")
    d = k8s_dir / "overlays" / overlay
    if not (d / "kustomization.yaml").exists():
        avail = sorted(
            p.name for p in (k8s_dir / "overlays").glob("*") if (p / "kustomization.yaml").exists()
        )
        raise HardnegError(f"no overlay {overlay!r} in {k8s_dir / 'overlays'} (available: {avail})")
    return d


def default_out_dir(releases_dir: Path, overlay: str, version: str) -> Path:
    return releases_dir / version if overlay == DEFAULT_OVERLAY else releases_dir / overlay / version


def load_history(releases_dir: str | os.PathLike) -> list[Release]:
    p = Path(releases_dir) / HISTORY_FILE
    if not p.exists():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return [Release.from_dict(r) for r in data["releases"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HardnegError(f"{p}: unreadable release history ({e})") from None


def _append_history(releases_dir: Path, rel: Release) -> Path:
    releases_dir.mkdir(parents=True, exist_ok=True)
    hist = load_history(releases_dir) + [rel]
    p = releases_dir / HISTORY_FILE
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"releases": [r.to_dict() for r in hist]}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


@dataclass
class RolloutState:
    entries: list[Release]
    rolled_out: list[str]  # versions in the order they received 100 % (consecutive duplicates collapsed)

    @property
    def last(self) -> Release | None:
        return self.entries[-1] if self.entries else None

    @property
    def current_rolled_out(self) -> str | None:
        return self.rolled_out[-1] if self.rolled_out else None

    @property
    def canary_in_flight(self) -> bool:
        last = self.last
        return bool(last and last.canary and last.canary > 0 and last.version != self.current_rolled_out)


def rollout_state(history: list[Release], overlay: str) -> RolloutState:
    entries = [r for r in history if r.overlay == overlay]
    rolled: list[str] = []
    for r in entries:
        if r.rolled_out and (not rolled or rolled[-1] != r.rolled_out):
            rolled.append(r.rolled_out)
    return RolloutState(entries, rolled)


def _traffic(canary: int | None, version: str, rolled_out: str | None) -> tuple[str, str]:
    """(human description, version holding the rolled-out revision afterwards)."""
    if canary is None:
        return f"100% {version}", version
    if rolled_out is None:
        return (
            f"100% {version} (first release: KServe ignores canaryTrafficPercent until a revision is rolled out)",
            version,
        )
    if canary == 0:
        return f"100% {rolled_out} (rolled-out revision), 0% {version}", rolled_out
    return f"{canary}% {version}, {100 - canary}% {rolled_out} (rolled-out revision)", rolled_out


# ------------------------------------------------------------------------------------------------------ rendering


def _kustomization(rel: Release, overlay_dir: Path, out: Path, image: str) -> dict[str, Any]:
    target = {"group": ISVC_GROUP, "version": ISVC_VERSION, "kind": ISVC_KIND, "name": ISVC_NAME}
    k: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(overlay_dir.resolve(), out.resolve())],
    }
    if rel.image_tag:
        k["images"] = [{"name": image, "newTag": rel.image_tag}]
    k["patches"] = [
        {"path": "release-patch.yaml", "target": target},
        {"path": "container-patch.yaml", "target": target},
    ]
    return k


def _release_patch(rel: Release) -> dict[str, Any]:
    labels = {LABEL_MODEL_VERSION: rel.version}
    return {
        "apiVersion": f"{ISVC_GROUP}/{ISVC_VERSION}",
        "kind": ISVC_KIND,
        "metadata": {"name": ISVC_NAME, "labels": labels, "annotations": dict(rel.annotations)},
        # canaryTrafficPercent null = field removed (promote / full rollback): the latest revision gets 100 %
        "spec": {"predictor": {"labels": dict(labels), "canaryTrafficPercent": rel.canary}},
    }


def _container_patch(rel: Release) -> list[dict[str, Any]]:
    return [
        {"op": "test", "path": "/spec/predictor/containers/0/name", "value": CONTAINER_NAME},
        {"op": "test", "path": "/spec/predictor/containers/0/env/0/name", "value": "STORAGE_URI"},
        {"op": "replace", "path": "/spec/predictor/containers/0/env/0/value", "value": rel.storage_uri},
    ]


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors in files people read
        return True


def _dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=1000)


def _find_isvc(docs: list[Any]) -> dict[str, Any]:
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == ISVC_KIND]
    if len(found) != 1:
        raise HardnegError(
            f"expected exactly one InferenceService in the rendered release, found {len(found)}"
        )
    return found[0]


def _check_rendered(isvc: dict[str, Any], rel: Release, image: str) -> list[str]:
    """The patches really landed (a patch that silently did not apply would ship the wrong model)."""
    errs = []
    meta, pred = isvc.get("metadata", {}), isvc.get("spec", {}).get("predictor", {})
    if (meta.get("labels") or {}).get(LABEL_MODEL_VERSION) != rel.version:
        errs.append(f"metadata.labels[{LABEL_MODEL_VERSION}] != {rel.version}")
    anns = meta.get("annotations") or {}
    errs += [f"metadata.annotations[{k}] != {v!r}" for k, v in rel.annotations.items() if anns.get(k) != v]
    if pred.get("canaryTrafficPercent") != rel.canary:
        errs.append(f"canaryTrafficPercent is {pred.get('canaryTrafficPercent')!r}, expected {rel.canary!r}")
    c = (pred.get("containers") or [{}])[0]
    env = {e.get("name"): e.get("value") for e in c.get("env") or []}
    if env.get("STORAGE_URI") != rel.storage_uri:
        errs.append(f"STORAGE_URI is {env.get('STORAGE_URI')!r}, expected {rel.storage_uri!r}")
    if rel.image_tag and c.get("image") != f"{image}:{rel.image_tag}":
        errs.append(f"image is {c.get('image')!r}, expected {image}:{rel.image_tag}")
    return errs


def render_release(rel: Release, settings: ReleaseSettings, *, record: bool = True) -> RenderResult:
    """Write the release folder, build it with kubectl kustomize (when present), validate, record in history."""
    from hardneg.k8s_validate import kubectl_path, kustomize_build, parse_documents, validate_documents

    overlay_dir = _check_overlay(settings.k8s_dir, rel.overlay)
    out = Path(rel.out_dir)
    # build in a sibling staging folder (same relative path to the overlay); `out` changes only on success
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        rel.created = datetime.now(UTC).isoformat(timespec="seconds")
        header = (
            f"# Generated by `hardneg release` ({rel.action} {rel.version} -> overlay {rel.overlay}, {rel.created}).\n"
            f"# Traffic: {rel.traffic}. Apply: kubectl apply -k {out}  (see k8s/README.md). Do not edit by hand.\n"
        )
        files = {
            "kustomization.yaml": header + _dump(_kustomization(rel, overlay_dir, out, settings.image)),
            "release-patch.yaml": header + _dump(_release_patch(rel)),
            "container-patch.yaml": header + _dump(_container_patch(rel)),
        }
        for name, text in files.items():
            (stage / name).write_text(text, encoding="utf-8")

        rendered, n_docs = False, 0
        if kubectl_path() is not None:
            text = kustomize_build(stage)
            docs = parse_documents(text, f"<kustomize {out}>")
            problems = [str(p) for p in validate_documents(docs, settings.kubernetes_version)]
            isvc = _find_isvc([d for _, d in docs])
            problems += [
                f"{out}: InferenceService/{ISVC_NAME}: {e}"
                for e in _check_rendered(isvc, rel, settings.image)
            ]
            if problems:
                raise HardnegError(
                    f"release {rel.version} would render invalid manifests (nothing written to {out}):\n  "
                    + "\n  ".join(problems)
                )
            rel.effective_image = isvc["spec"]["predictor"]["containers"][0].get("image")
            (stage / MANIFESTS_FILE).write_text(text, encoding="utf-8")
            rendered, n_docs = True, len(docs)
        (stage / RELEASE_FILE).write_text(json.dumps(rel.to_dict(), indent=2) + "\n", encoding="utf-8")

        out.mkdir(parents=True, exist_ok=True)
        if not rendered and (out / MANIFESTS_FILE).exists():
            (out / MANIFESTS_FILE).unlink()  # stale: it would not match the new kustomization
        written = []
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if record:
        _append_history(settings.releases_dir, rel)
    return RenderResult(rel, out, written, rendered, n_docs)


def _storage_uri(settings: ReleaseSettings, overlay: str, version: str, override: str | None) -> str:
    if override:
        uri = override
    else:
        tmpl = settings.storage_uri.get(overlay)
        if not tmpl:
            raise HardnegError(
                f"no storage URI for overlay {overlay!r}: pass --storage-uri or set release.storage_uri.{overlay}"
            )
        uri = tmpl.format(version=version, overlay=overlay)
    if not re.match(r"^(s3|gs|pvc|hdfs|webhdfs|hf|oci|https?)://\S+$", uri):
        raise HardnegError(
            f"unsupported storage URI {uri!r} (s3://, gs://, pvc://, https://, hf://, oci://...)"
        )
    return uri


def release(
    *,
    version: str | None,
    model_dir: str | os.PathLike | None = None,
    canary: int | None = None,
    promote: bool = False,
    rollback: bool = False,
    overlay: str | None = None,
    image_tag: str | None = None,
    storage_uri: str | None = None,
    out: str | os.PathLike | None = None,
    params: dict[str, Any] | None = None,
    settings: ReleaseSettings | None = None,
) -> RenderResult:
    """Render a canary (default), a promotion or a rollback of the reranker; see the module docstring."""
    s = settings or ReleaseSettings.from_params(params)
    overlay = overlay or s.overlay
    _check_overlay(s.k8s_dir, overlay)
    if promote and rollback:
        raise HardnegError("--promote and --rollback are exclusive")
    if (promote or rollback) and canary is not None:
        raise HardnegError("--canary applies to a canary release, not to --promote / --rollback")
    if image_tag is not None and not _IMAGE_TAG.match(image_tag):
        raise HardnegError(f"invalid image tag {image_tag!r}")
    state = rollout_state(load_history(s.releases_dir), overlay)
    if rollback:
        return _rollback(state, s, overlay, version, out)

    if version is None and model_dir is not None:
        version = model_version_of(model_dir)
    if version is None:
        raise HardnegError("--version is required (the model folder's metadata.json records none)")
    _check_version(version)
    previous_entry = next((r for r in reversed(state.entries) if r.version == version), None)
    if model_dir is not None:
        annotations = lineage_annotations(read_model_lineage(model_dir))
    elif promote and previous_entry is not None:
        annotations = dict(previous_entry.annotations)
    else:
        raise HardnegError(
            "--model-dir is required (the exported model folder: its lineage becomes annotations)"
        )
    if promote:
        pct, action = None, "promote"
        if image_tag is None and previous_entry is not None:
            image_tag = previous_entry.image_tag
        if storage_uri is None and previous_entry is not None:
            storage_uri = previous_entry.storage_uri
    else:
        pct, action = (s.canary_percent if canary is None else canary), "canary"
        if not isinstance(pct, int) or isinstance(pct, bool) or not 1 <= pct <= 99:
            raise HardnegError(f"--canary must be an integer in 1..99 (got {pct!r}); use --promote for 100")
    traffic, rolled = _traffic(pct, version, state.current_rolled_out)
    rel = Release(
        version=version,
        overlay=overlay,
        action=action,
        canary=pct,
        image=s.image,
        image_tag=image_tag,
        storage_uri=_storage_uri(s, overlay, version, storage_uri),
        annotations=annotations,
        out_dir=str(Path(out) if out else default_out_dir(s.releases_dir, overlay, version)),
        traffic=traffic,
        rolled_out=rolled,
    )
    return render_release(rel, s)


def _rollback(
    state: RolloutState, s: ReleaseSettings, overlay: str, version: str | None, out: Any
) -> RenderResult:
    if not state.entries:
        raise HardnegError(
            f"nothing to roll back: no release of overlay {overlay!r} in {s.releases_dir / HISTORY_FILE}"
        )
    if state.canary_in_flight:
        bad, target, pct = state.last.version, state.current_rolled_out, 0
    else:
        # never back to a version that was itself rolled back (a second rollback must not restore the bad one)
        rolled_back = {r.previous for r in state.entries if r.action == "rollback"}
        bad = state.current_rolled_out
        earlier = [v for v in state.rolled_out[:-1] if v != bad and v not in rolled_back]
        if not earlier:
            raise HardnegError(
                f"cannot roll back {bad}: no earlier rolled-out version of overlay {overlay!r} (that was not itself "
                f"rolled back) in {s.releases_dir / HISTORY_FILE}"
            )
        target, pct = earlier[-1], None
    if version is not None and version != bad:
        raise HardnegError(
            f"--version {version} is not what overlay {overlay!r} would roll back (that is {bad})"
        )
    src = next(r for r in reversed(state.entries) if r.version == target)
    traffic, rolled = _traffic(pct, target, state.current_rolled_out if pct == 0 else None)
    rel = Release(
        version=target,
        overlay=overlay,
        action="rollback",
        canary=pct,
        image=src.image,
        image_tag=src.image_tag or _tag_of(src.effective_image),
        storage_uri=src.storage_uri,
        annotations=dict(src.annotations),
        out_dir=str(Path(out) if out else default_out_dir(s.releases_dir, overlay, target)),
        previous=bad,
        traffic=traffic,
        rolled_out=rolled,
    )
    return render_release(rel, s)


def _tag_of(image: str | None) -> str | None:
    if not image or "@" in image:
        return None
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else None


# ------------------------------------------------------------------------------------------------ recurring runs


def recurring_run_config(overlay: str | None = None, k8s_dir: str | os.PathLike = "k8s") -> dict[str, str]:
    """The KFP recurring-run settings (experiment, pipeline_name, cron, ...) as the overlay renders them; without
    kubectl, the base ConfigMap merged with the overlay's recurring-run-patch.yaml."""
    from hardneg.k8s_validate import kubectl_path, kustomize_build

    k8s = Path(k8s_dir)
    src = _check_overlay(k8s, overlay) if overlay else k8s / "base"
    if kubectl_path() is not None:
        docs = list(yaml.safe_load_all(kustomize_build(src)))
    else:
        docs = list(yaml.safe_load_all((k8s / "base" / "recurring-run.yaml").read_text(encoding="utf-8")))
        patch = src / "recurring-run-patch.yaml"
        if overlay and patch.exists():
            docs[0]["data"].update(yaml.safe_load(patch.read_text(encoding="utf-8")).get("data") or {})
    for d in docs:
        if (
            isinstance(d, dict)
            and d.get("kind") == "ConfigMap"
            and d["metadata"]["name"] == RECURRING_RUN_CONFIGMAP
        ):
            return {k: str(v) for k, v in (d.get("data") or {}).items()}
    raise HardnegError(f"no ConfigMap {RECURRING_RUN_CONFIGMAP} in {src}")
