"""params.yaml: the only home of tunables, one section per stage.

``load_params`` merges a user file over the packaged defaults (``hardneg/resources/params.default.yaml``, a copy of
the repo's params.yaml) so a partial file works; unknown top-level sections are an error (typos fail loudly).
``params_hash`` fingerprints the sections a stage reads, so lineage and caches follow the params that matter.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from hardneg.errors import ConfigError
from hardneg.settings import default_params, merge_params, settings

__all__ = ["default_params", "load_params", "merge_params", "params_hash"]

DEFAULT_PARAMS_FILE = "params.yaml"


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Defaults, overridden by ``path`` (or ./params.yaml when it exists and path is None)."""
    params = default_params()
    if path is None:
        path = DEFAULT_PARAMS_FILE if Path(DEFAULT_PARAMS_FILE).exists() else None
    if path is None:
        return params
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"params file not found: {p}")
    try:
        user = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{p}: expected a mapping of sections, got {type(user).__name__}")
    unknown = sorted(set(user) - set(params))
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {unknown}; known: {sorted(params)}")
    merged = merge_params(params, user)
    try:
        settings(merged)  # every key and type checked here, before any stage starts
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return merged


def params_hash(params: dict[str, Any], sections: Iterable[str] | None = None) -> str:
    """Short sha256 of the given sections (all when None), canonical JSON."""
    sub = params if sections is None else {s: params.get(s) for s in sorted(sections)}
    blob = json.dumps(sub, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
