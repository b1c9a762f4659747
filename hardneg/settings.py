"""Typed, frozen settings: one dataclass per params.yaml section, checked key by key.

The defaults live in one place, ``hardneg/resources/params.default.yaml`` (a copy of the repository's params.yaml):
the dataclasses below declare names and types only. :func:`settings` merges a params dict over those defaults and
builds a :class:`Settings`; an unknown key, a missing key or a value of the wrong type is a
:class:`~hardneg.errors.ConfigError` naming the key (``train.bi_encoder.lr must be float, got '3e-4'``).
:func:`hardneg.config.load_params` runs this check on every load, so a typo fails before any stage starts.

Stages read their section as attributes (``settings(params).train.max_steps``): no ``.get(key, default)`` with a
second default in the code.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hardneg.errors import ConfigError

log = logging.getLogger(__name__)


@functools.cache
def _packaged_defaults() -> dict[str, Any]:
    from importlib import resources

    import yaml

    text = resources.files("hardneg").joinpath("resources/params.default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def default_params() -> dict[str, Any]:
    """The packaged defaults (``hardneg/resources/params.default.yaml``): the one home of every default value.
    Parsed once per process; each call returns a fresh copy (callers may modify it)."""
    return copy.deepcopy(_packaged_defaults())


def merge_params(base: dict, override: dict) -> dict:
    """``override`` merged over ``base`` section by section (nested mappings merged, other values replaced)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_params(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Data:
    dir: str
    train_split: str
    dev_split: str
    test_split: str
    dev_fraction: float
    dev_max_queries: int
    dev_min_queries: int
    dev_max_fraction: float
    dev_seed: int


@dataclass(frozen=True)
class Validate:
    min_text_chars: int
    max_text_chars: int
    max_query_chars: int
    score_min: int
    score_max: int
    empty_documents: Literal["drop", "refuse"]
    empty_queries: Literal["drop", "refuse"]
    max_bad_encoding_frac: float


@dataclass(frozen=True)
class EmbedModel:
    """One entry of ``embed.models``; ``None`` (or absent) takes the model's own default (hardneg.models)."""

    name: str
    weight: float = 1.0
    max_length: int | None = None
    batch_size: int | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None


@dataclass(frozen=True)
class Embed:
    cache_dir: str | None
    chunk_size: int
    bf16: Literal["auto"] | bool
    shards: int
    models: list[EmbedModel]


@dataclass(frozen=True)
class Reduce:
    variance: float | None
    n_components: int | None
    fit_sample: int | None
    weight_models: bool
    seed: int


@dataclass(frozen=True)
class Retrieve:
    top_k: int
    rerank_depth: int


@dataclass(frozen=True)
class BiEncoderSection:
    max_length: int
    queries_per_step: int
    negatives_per_query: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    trainable_layers: int | None
    scale: float
    drop_without_negative: bool
    batch_size: int
    tune: Literal["query", "both"]
    epochs: float | None
    pseudo_queries: float
    distill: float
    interpolate: float


@dataclass(frozen=True)
class CrossEncoderSection:
    loss: Literal["listwise", "bce", "margin"]
    margin: float
    group_size: int
    queries_per_step: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    max_length: int
    eval_at_start: bool


@dataclass(frozen=True)
class Train:
    kind: Literal["bi-encoder", "cross-encoder"]
    base_model: str
    max_steps: int
    seed: int
    bf16: Literal["auto"] | bool
    torch_threads: int | None
    time_cap_min: float
    eval_every: int
    eval_depth: int
    bi_encoder: BiEncoderSection
    cross_encoder: CrossEncoderSection


@dataclass(frozen=True)
class Evaluate:
    first_stage: Literal["dense", "bm25", "hybrid"]
    fusion: bool
    fusion_weights: list[float]
    gate_signals: list[Literal["none", "seen", "margin", "seen-margin"]]
    rerank_depths: list[int]
    gate_max_p: float | None
    gate_cv_folds: int


@dataclass(frozen=True)
class Compare:
    arms: list[str]
    seeds: list[int]
    max_steps: int | None
    num_negatives: int
    ensemble_weight_grid: list[float]


@dataclass(frozen=True)
class Export:
    opset: int
    parity_fp32_max_abs: float
    parity_int8_max_mrr_drop: float
    parity_sample_pairs: int
    parity_dev_queries: int | None
    parity_candidate_pairs: int
    corpus_vectors: Literal["auto"] | bool
    corpus_vectors_max_l2: float


@dataclass(frozen=True)
class Serve:
    model_name: str
    variant: Literal["auto", "int8", "fp32"]
    runtime: Literal["auto", "onnxruntime", "openvino"]
    select_seconds: float
    intra_op_threads: int | None
    max_documents: int
    max_text_chars: int
    max_body_bytes: int
    doc_cache_size: int
    batch_window_ms: float
    max_batch_texts: int
    openvino_runtime_cache: int


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    cpu_limit: str | None = None
    memory_limit: str | None = None


@dataclass(frozen=True)
class Cluster:
    git_repo: str
    dvc_secret: str
    cache_pvc: str
    cache_mount: str


@dataclass(frozen=True)
class Pipeline:
    pipeline_root: str
    image: str
    min_gain_mrr10: float
    gpu_stages: list[str]
    resources: dict[str, Resources]
    cluster: Cluster


@dataclass(frozen=True)
class Release:
    k8s_dir: str
    releases_dir: str
    overlay: str
    image: str
    canary_percent: int
    storage_uri: dict[str, str]
    kubernetes_version: str


# ------------------------------------------------------------------------------------------------ trainer views

# the ``train`` keys both trainers read besides their own sub-section
TRAIN_COMMON: tuple[str, ...] = (
    "base_model",
    "max_steps",
    "seed",
    "torch_threads",
    "time_cap_min",
    "eval_every",
    "eval_depth",
)


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


class TrainerView:
    """A trainer's flat view of the typed ``train`` section: its common keys (:data:`TRAIN_COMMON`), its own
    sub-section (``SECTION``: ``bi_encoder`` / ``cross_encoder``) and ``bf16`` resolved on this machine. No field is
    copied: ``view.lr`` reads ``train.<SECTION>.lr``, ``view.max_steps`` reads ``train.max_steps``. Subclasses are
    frozen dataclasses with exactly the fields ``train`` (:class:`Train`) and ``bf16`` (bool), and check their values
    in ``__post_init__`` (so every copy made by :meth:`replace` is checked too)."""

    SECTION = ""

    def __getattr__(self, name: str) -> Any:  # called only when the instance has no such attribute
        train = self.__dict__.get("train")
        if train is None or name.startswith("__"):
            raise AttributeError(name)
        sec = getattr(train, self.SECTION)
        if name in _field_names(type(sec)):
            return getattr(sec, name)
        if name in TRAIN_COMMON:
            return getattr(train, name)
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    def flat(self) -> dict[str, Any]:
        """What the trainer reads, as one flat dict (``train_metrics.json`` ``config``, the lineage's hash)."""
        train = self.__dict__["train"]
        return {
            **{k: getattr(train, k) for k in TRAIN_COMMON},
            "bf16": self.__dict__["bf16"],
            **dataclasses.asdict(getattr(train, self.SECTION)),
        }

    def replace(self, **changes: Any) -> Any:
        """A copy with single keys changed (``dataclasses.replace`` of the sections; values as given, None
        included), checked again."""
        train = self.__dict__["train"]
        sec = getattr(train, self.SECTION)
        own = _field_names(type(sec))
        unknown = sorted(set(changes) - own - set(TRAIN_COMMON) - {"bf16"})
        if unknown:
            raise ConfigError(
                f"unknown train.{self.SECTION} option(s) {unknown}; known: {sorted(self.flat())}"
            )
        sec = dataclasses.replace(sec, **{k: v for k, v in changes.items() if k in own})
        common = {k: v for k, v in changes.items() if k in TRAIN_COMMON}
        train = dataclasses.replace(train, **common, **{self.SECTION: sec})
        return dataclasses.replace(self, train=train, bf16=changes.get("bf16", self.__dict__["bf16"]))  # type: ignore[type-var]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Any:
        """From params (merged over the packaged defaults, every key typed); ``overrides`` that are not None replace
        single keys, e.g. ``from_params(params, max_steps=12, tune="both")``."""
        from hardneg.hw import use_bf16

        t = settings(params).train
        view = cls(train=t, bf16=use_bf16(t.bf16))  # type: ignore[call-arg]
        changes = {k: v for k, v in overrides.items() if v is not None}
        return view.replace(**changes) if changes else view


ST_DEFAULT = "st-default"  # mine.policy handled by hardneg.anchors (sentence-transformers defaults)

MINE_POLICIES: tuple[str, ...] = ("paper", "positive-aware", "hybrid", "rank-window", "random", "bm25")
# how a rule that compares a candidate with "the positive" reads when a query has several positives
MINE_READINGS: tuple[str, ...] = ("per-pair", "all-positives")


@dataclass(frozen=True)
class MineConfig:
    """The ``mine`` section (policy-specific value checks in :meth:`validate`). No defaults here: from_params
    completes a partial section with the packaged params."""

    policy: str
    positive_reading: str
    top_k: int
    index: str
    num_negatives: int
    paper_num_negatives: int
    rescan: bool
    perc_pos: float
    dedup_sim: float
    dedup_negatives: bool
    rank_min: int
    rank_max: int
    seed: int
    search_batch_size: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> MineConfig:
        """From full params (``params['mine']``) or a bare mine section, completed with the packaged defaults;
        ``overrides`` win (``None`` ignored). Unknown keys and wrongly typed values name the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(params, Mapping):
            raise ConfigError(f"params must be a mapping, got {type(params).__name__}")
        sec = dict(params["mine"]) if "mine" in params else (dict(params) if set(params) <= known else {})
        sec.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(sec) - known)
        if unknown:
            raise ConfigError(f"unknown mine option(s) {unknown}; known: {sorted(known)}")
        hints = get_type_hints(cls)
        sec = {k: _convert(hints[k], v, f"mine.{k}") for k, v in {**default_params()["mine"], **sec}.items()}
        cfg = cls(**sec)
        cfg.validate()
        return cfg

    @property
    def n(self) -> int:
        return int(self.paper_num_negatives if self.policy == "paper" else self.num_negatives)

    def validate(self) -> None:
        if self.policy not in MINE_POLICIES:
            raise ConfigError(f"unknown mining policy '{self.policy}'; use one of {list(MINE_POLICIES)}")
        if self.positive_reading not in MINE_READINGS:
            raise ConfigError(
                f"unknown mine.positive_reading '{self.positive_reading}'; use one of {list(MINE_READINGS)}"
            )
        if self.n < 1:
            raise ConfigError(f"the number of negatives must be >= 1, got {self.n}")
        if self.top_k < 1:
            raise ConfigError(f"mine.top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.perc_pos <= 1.0:
            raise ConfigError(f"mine.perc_pos must be in (0, 1], got {self.perc_pos}")
        if not -1.0 <= self.dedup_sim <= 1.0:
            raise ConfigError(f"mine.dedup_sim must be a cosine in [-1, 1], got {self.dedup_sim}")
        if not 0 <= self.rank_min < self.rank_max:
            raise ConfigError(
                f"need 0 <= mine.rank_min < mine.rank_max, got {self.rank_min}..{self.rank_max}"
            )
        if self.policy == "rank-window" and self.rank_max - self.rank_min < self.num_negatives:
            log.warning(
                "rank window %d..%d is narrower than num_negatives=%d",
                self.rank_min,
                self.rank_max,
                self.num_negatives,
            )


SECTIONS: dict[str, type] = {
    "data": Data,
    "validate": Validate,
    "embed": Embed,
    "reduce": Reduce,
    "retrieve": Retrieve,
    "train": Train,
    "evaluate": Evaluate,
    "compare": Compare,
    "export": Export,
    "serve": Serve,
    "pipeline": Pipeline,
    "release": Release,
}


@dataclass(frozen=True)
class Settings:
    data: Data
    validate: Validate
    embed: Embed
    reduce: Reduce
    retrieve: Retrieve
    train: Train
    evaluate: Evaluate
    compare: Compare
    export: Export
    serve: Serve
    pipeline: Pipeline
    release: Release
    mine: MineConfig
    # the validated params dict these were built from (packaged defaults merged): what the modules that still read
    # a dict, and the lineage's params hashes, get (:attr:`params`); not part of equality
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        """A fresh copy of the validated params dict (packaged defaults merged) these settings were built from."""
        return copy.deepcopy(dict(self.source))

    def override(self, changes: Mapping[str, Any]) -> Settings:
        """New settings with ``changes`` (a nested params mapping, e.g. ``{"mine": {"policy": "random"}}``) merged
        over these, every key checked again; the dict the modules below read changes with them."""
        return settings(merge_params(self.params, dict(changes)))


# ----------------------------------------------------------------------------------------------------- building


def settings(params: Mapping[str, Any] | Settings) -> Settings:
    """Typed settings of ``params`` (merged over the packaged defaults first, so a partial dict is fine); built
    once at each door (CLI, KFP component) and handed to the stage functions. Settings are returned as they are."""
    if isinstance(params, Settings):
        return params
    import json

    # the modules below the stages still look sections up from a dict (:func:`section`): build each dict once
    return _settings_of(json.dumps(params, sort_keys=True, default=str), params)


_BUILT: dict[str, Settings] = {}


def _settings_of(key: str, params: Mapping[str, Any]) -> Settings:
    """:func:`settings` of a dict, memoised by its content (``key``: its canonical JSON; a few recent ones kept)."""
    if key not in _BUILT:
        if len(_BUILT) >= 32:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = _build_settings(params)
    return _BUILT[key]


def _build_settings(params: Mapping[str, Any]) -> Settings:
    full = merge_params(default_params(), dict(params))
    unknown = sorted(set(full) - set(SECTIONS) - {"mine"})
    if unknown:
        raise ConfigError(f"params: unknown section(s) {unknown}; known: {sorted([*SECTIONS, 'mine'])}")
    built = {name: build(cls, full.get(name), name) for name, cls in SECTIONS.items()}
    policy = full["mine"].get("policy")
    if policy == ST_DEFAULT:  # not a hardneg.mine policy (sentence-transformers' miner): check the other keys
        mine = dataclasses.replace(MineConfig.from_params(full, policy="hybrid"), policy=ST_DEFAULT)
    else:
        mine = MineConfig.from_params(full)
    if built["evaluate"].gate_cv_folds < 0:
        raise ConfigError(
            f"evaluate.gate_cv_folds must be >= 0 (0: off), got {built['evaluate'].gate_cv_folds}"
        )
    if any(d < 1 for d in built["evaluate"].rerank_depths):
        raise ConfigError(f"evaluate.rerank_depths must be >= 1, got {built['evaluate'].rerank_depths}")
    serve = built["serve"]
    if serve.batch_window_ms < 0 or not math.isfinite(serve.batch_window_ms):
        raise ConfigError(
            f"serve.batch_window_ms must be >= 0 (0: batching off), got {serve.batch_window_ms}"
        )
    if serve.max_batch_texts < 1:
        raise ConfigError(f"serve.max_batch_texts must be >= 1, got {serve.max_batch_texts}")
    return Settings(**built, mine=mine, source=full)


def section(params: Mapping[str, Any] | Settings, name: str) -> Any:
    """One typed section, e.g. ``section(params, "train").max_steps``."""
    return getattr(settings(params), name)


def build(cls: type, value: Any, where: str) -> Any:
    """``cls(**value)`` with every key checked: unknown, missing and wrongly typed keys name ``where.key``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {_show(value)}")
    flds = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(flds))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[f'{where}.{k}' for k in unknown]}; known in {where}: {sorted(flds)}"
        )
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in flds.items():
        if name not in value:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name} is missing (params.yaml)")
            continue
        kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}")
    return cls(**kwargs)


def _convert(tp: Any, v: Any, where: str) -> Any:
    """``v`` checked against the annotation ``tp`` (ints are accepted where floats are expected)."""
    origin = get_origin(tp)
    if tp is Any:
        return v
    if origin in (Union, types.UnionType):
        for arm in get_args(tp):
            try:
                return _convert(arm, v, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {_show(v)}")
    if origin is Literal:
        if v in get_args(tp) and type(v) is type(get_args(tp)[0]):
            return v
        raise ConfigError(f"{where} must be one of {list(get_args(tp))}, got {_show(v)}")
    if tp is type(None):
        if v is None:
            return None
        raise ConfigError(f"{where} must be null, got {_show(v)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, v, where)
    if origin is list:
        if not isinstance(v, list):
            raise ConfigError(f"{where} must be a list, got {_show(v)}")
        (item,) = get_args(tp)
        return [_convert(item, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {_show(v)}")
        _, val = get_args(tp)
        return {str(k): _convert(val, x, f"{where}.{k}") for k, x in v.items()}
    return _scalar(tp, v, where)


def _scalar(tp: Any, v: Any, where: str) -> Any:
    if tp is bool:
        ok = isinstance(v, bool)
    elif tp is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif tp is float:
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        v = float(v) if ok else v
    elif tp is str:
        ok = isinstance(v, str)
    else:  # pragma: no cover - a new annotation kind
        raise TypeError(f"settings: unsupported annotation {tp!r} at {where}")
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {_show(v)}")
    return v


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"
