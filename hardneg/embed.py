"""Multi-model text encoding with a fingerprinted, resumable on-disk cache.

``embed_texts`` turns texts into float32, L2-normalised vectors with one configured model (an entry of
``params.yaml`` ``embed.models``). Two backends:

- **torch**: sentence-transformers (``hardneg.models.resolve_model``), optional bf16 autocast on CPU;
- **onnx**: onnxruntime + ``tokenizers``; the graph either pools itself (``pooling="none"``, e.g. the
  paraphrase-MiniLM-L3-v2 export, output ``461``) or returns token states that we mean-pool with the attention mask.

Cache layout: ``CACHE/<model-slug>/<key>/<chunk-hash>.npy`` where ``key`` hashes what changes the vectors (weights
hash, backend, precision, pooling, prompt, max_length) and ``chunk-hash`` hashes the texts of one chunk of
``chunk_size`` consecutive inputs. Chunks are written atomically (tmp + ``os.replace``), so an interrupted run resumes
from the finished chunks; a mining threshold is not part of any key (re-mining never re-embeds); a prompt is (changing
it always re-embeds). The model is loaded only when some chunk is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hardneg.artifacts import atomic_save_npy, atomic_write_json, staged_output
from hardneg.errors import ConfigError, HardnegError, ModelNotFoundError
from hardneg.models import ResolvedModel, resolve_model

log = logging.getLogger(__name__)

Kind = Literal["query", "document"]


class NotCachedError(HardnegError):
    """``embed_texts(..., cached_only=True)`` on texts whose vectors the cache does not hold (all of them)."""


CACHE_FORMAT = 1  # bump when the cache layout or the encoding code changes the vectors
_SKIP_FOR_FINGERPRINT = (".md", ".lock")


# ------------------------------------------------------------------------------------------------ small helpers


def model_slug(name: str) -> str:
    """Folder-safe name for a model: the registry name as is; paths get their basename plus a short hash."""
    is_path = any(sep in name for sep in ("/", "\\")) and (
        os.path.exists(name) or name.startswith((".", "/", "~"))
    )
    base = Path(name).name if is_path else name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"
    if is_path:
        slug += "-" + hashlib.sha256(str(Path(name).expanduser().resolve()).encode()).hexdigest()[:8]
    return slug


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        return x
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32, copy=False)


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 of a list of texts (length-prefixed, so boundaries are unambiguous)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- fingerprints

_FP_MEMO: dict[tuple, str] = {}


def _fingerprint_files(resolved: ResolvedModel) -> list[Path]:
    """The files whose bytes define the model's vectors: weights, config, tokenizer."""
    if resolved.backend == "onnx":
        files = [Path(resolved.path)]
        if resolved.tokenizer_path:
            tok = Path(resolved.tokenizer_path)
            files += [tok / "tokenizer.json"] if (tok / "tokenizer.json").exists() else []
        return files
    root = Path(resolved.path)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.endswith(_SKIP_FOR_FINGERPRINT)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def model_fingerprint(resolved: ResolvedModel, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 over the model's files (relative name + content hash), computed once per (path, size, mtime) set.

    Memoised in memory and, when ``memo_file`` is given, on disk, so a new process does not re-hash 90 MB of weights.
    Hub ids that are not local folders fingerprint as ``hf:<id>`` (their revision is whatever the HF cache holds).
    """
    if not resolved.is_local:
        return f"hf:{resolved.path}"
    files = _fingerprint_files(resolved)
    if not files:
        raise ModelNotFoundError(f"model folder {resolved.path} holds no files")
    stat_key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    memo_key = (resolved.path, resolved.backend, stat_key)
    if memo_key in _FP_MEMO:
        return _FP_MEMO[memo_key]
    disk: dict[str, Any] = {}
    stat_id = hashlib.sha256(json.dumps([resolved.path, resolved.backend, stat_key]).encode()).hexdigest()
    if memo_file is not None and Path(memo_file).exists():
        try:
            disk = json.loads(Path(memo_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            disk = {}
        if stat_id in disk:
            _FP_MEMO[memo_key] = disk[stat_id]
            return disk[stat_id]
    from hardneg.lineage import sha256_file

    root = Path(resolved.path) if resolved.backend == "torch" else None
    h = hashlib.sha256()
    for f in files:
        rel = str(f.relative_to(root)) if root is not None else f.name
        h.update(rel.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    fp = h.hexdigest()
    _FP_MEMO[memo_key] = fp
    if memo_file is not None:
        disk[stat_id] = fp
        try:
            atomic_write_json(memo_file, disk)
        except OSError as e:  # a read-only cache still works, it just re-hashes next time
            log.debug("cannot write fingerprint memo %s: %s", memo_file, e)
    return fp


# --------------------------------------------------------------------------------------------------- encoders


class TorchEncoder:
    """sentence-transformers model on CPU (or the default device), optional bf16 autocast."""

    def __init__(self, resolved: ResolvedModel, max_length: int, bf16: bool):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("torch models need the [mine] extra: pip install 'hardneg[mine]'") from None
        self.model = SentenceTransformer(resolved.path, device="cpu")
        self.model.max_seq_length = int(max_length)
        self.bf16 = bool(bf16)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim() or 0)

    def encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        import contextlib

        import torch

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            v = self.model.encode(
                texts,
                prompt=prompt or None,
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return np.asarray(v, dtype=np.float32)


class OnnxEncoder:
    """onnxruntime session + a ``tokenizers`` fast tokenizer; mean pooling with the attention mask when needed."""

    def __init__(self, resolved: ResolvedModel, max_length: int):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "ONNX models need onnxruntime and tokenizers: pip install 'hardneg[mine]'"
            ) from None
        if not resolved.tokenizer_path or not (Path(resolved.tokenizer_path) / "tokenizer.json").exists():
            raise ModelNotFoundError(
                f"ONNX model {resolved.path}: no tokenizer.json found (put one next to the .onnx file)"
            )
        self.tok = Tokenizer.from_file(str(Path(resolved.tokenizer_path) / "tokenizer.json"))
        self.tok.enable_truncation(max_length=int(max_length))
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(resolved.path, sess_options=so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        outs = [o.name for o in self.sess.get_outputs()]
        self.output = resolved.onnx_output or outs[0]
        if self.output not in outs:
            raise ModelNotFoundError(f"ONNX model {resolved.path} has no output '{self.output}' (has {outs})")
        self.pooling = resolved.pooling
        shape = next(o.shape for o in self.sess.get_outputs() if o.name == self.output)
        self.dim = int(shape[-1]) if shape and isinstance(shape[-1], int) else 0

    def encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tok.encode_batch([prompt + t for t in texts[i : i + batch_size]])
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            feed = {k: v for k, v in feed.items() if k in self.inputs}
            (h,) = self.sess.run([self.output], feed)
            h = np.asarray(h, dtype=np.float32)
            if h.ndim == 3:  # token states -> mean over real tokens
                if self.pooling == "none":
                    raise ModelNotFoundError(f"ONNX output '{self.output}' is per-token but pooling='none'")
                m = mask[:, :, None].astype(np.float32)
                h = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out.append(h)
        return l2_normalize(np.concatenate(out, axis=0)) if out else np.zeros((0, self.dim), np.float32)


_ENCODERS: dict[tuple, TorchEncoder | OnnxEncoder] = {}


def load_encoder(resolved: ResolvedModel, max_length: int, bf16: bool) -> TorchEncoder | OnnxEncoder:
    """Load (once per process) the encoder for a resolved model."""
    key = (resolved.path, resolved.backend, int(max_length), bool(bf16) and resolved.backend == "torch")
    if key not in _ENCODERS:
        t = time.perf_counter()
        _ENCODERS[key] = (
            OnnxEncoder(resolved, max_length)
            if resolved.backend == "onnx"
            else TorchEncoder(resolved, max_length, bf16)
        )
        log.info("loaded %s (%s) in %.1fs", resolved.name, resolved.backend, time.perf_counter() - t)
    return _ENCODERS[key]


def clear_encoders() -> None:
    _ENCODERS.clear()


# ------------------------------------------------------------------------------------------------- embed_texts


def _model_cfg_value(model_cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    v = model_cfg.get(key, default)
    return default if v is None else v


def cache_key(
    resolved: ResolvedModel, fingerprint: str, prompt: str, max_length: int, precision: str
) -> dict[str, Any]:
    """The fields that determine a vector besides its text (hashed into the cache folder name)."""
    return {
        "format": CACHE_FORMAT,
        "model_fingerprint": fingerprint,
        "backend": resolved.backend,
        "pooling": resolved.pooling,
        "onnx_output": resolved.onnx_output,
        "precision": precision,
        "prompt": prompt,
        "max_length": int(max_length),
    }


def _cache_folder(
    resolved: ResolvedModel,
    name: str,
    cache_dir: str | os.PathLike | None,
    prompt: str,
    max_length: int,
    precision: str,
    read_only: bool = False,
) -> tuple[Path | None, str]:
    """The cache folder of (model, prompt, max_length, precision) and the model fingerprint (no cache: None);
    ``read_only``: no folder is created (no ``key.json``)."""
    root = Path(cache_dir) if cache_dir is not None else None
    fingerprint = model_fingerprint(resolved, root / "fingerprints.json" if root else None)
    key = cache_key(resolved, fingerprint, prompt, max_length, precision)
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = root / model_slug(name) / key_hash if root else None
    if folder is not None and not read_only and not (folder / "key.json").exists():
        atomic_write_json(folder / "key.json", {**key, "model": name})
    return folder, fingerprint


def _plan_chunks(
    texts: list[str], chunk_size: int, folder: Path | None
) -> list[tuple[int, int, Path | None, np.ndarray | None]]:
    """``(start, end, cache file, cached vectors or None)`` per chunk: which chunks are already done."""
    plan: list[tuple[int, int, Path | None, np.ndarray | None]] = []
    for s in range(0, len(texts), chunk_size):
        e = min(s + chunk_size, len(texts))
        path = folder / f"{texts_hash(texts[s:e])}.npy" if folder else None
        plan.append((s, e, path, _load_chunk(path, e - s) if path is not None else None))
    return plan


# long: one pass over the cache plan (cached-only check, lazy model load, chunked encode + save, stats); half docstring
def embed_texts(
    texts: Sequence[str],
    model_cfg: Mapping[str, Any],
    cache_dir: str | os.PathLike | None,
    kind: Kind = "document",
    progress: bool = True,
    *,
    chunk_size: int = 512,
    bf16: bool = False,
    stats: dict[str, Any] | None = None,
    cached_only: bool = False,
) -> np.ndarray:
    """Encode ``texts`` with one model; float32 ``[len(texts), dim]``, L2-normalised, in input order.

    Args:
        texts: the texts (documents should already be ``Document.full_text``).
        model_cfg: ``{name, max_length, batch_size, query_prompt, document_prompt, weight}`` (weight unused here).
        cache_dir: cache root (``None`` disables caching).
        kind: ``"query"`` or ``"document"``: selects the prompt.
        progress: show a progress bar (docs/s).
        chunk_size: texts per cache chunk (the unit of resume).
        bf16: bf16 autocast for torch models on CPU (ignored for ONNX).
        stats: if given, filled with ``{chunks, chunks_cached, rows_encoded, seconds, fingerprint, dim, cache_dir}``.
        cached_only: raise :class:`NotCachedError` (before loading any model) unless every chunk is cached.
    """
    if kind not in ("query", "document"):
        raise ConfigError(f"kind must be 'query' or 'document', got {kind!r}")
    if "name" not in model_cfg:
        raise ConfigError(f"embed model entry without a 'name': {dict(model_cfg)}")
    t0 = time.perf_counter()
    texts = list(texts)
    name = str(model_cfg["name"])
    max_length = int(_model_cfg_value(model_cfg, "max_length", 256))
    batch_size = int(_model_cfg_value(model_cfg, "batch_size", 64))
    prompt = str(_model_cfg_value(model_cfg, f"{kind}_prompt", ""))
    chunk_size = max(1, int(chunk_size))
    resolved = resolve_model(name)
    precision = "bf16" if (bf16 and resolved.backend == "torch") else "fp32"
    folder, fingerprint = _cache_folder(
        resolved, name, cache_dir, prompt, max_length, precision, read_only=cached_only
    )
    plan = _plan_chunks(texts, chunk_size, folder)
    cached_rows = sum(e - s for s, e, _, a in plan if a is not None)
    if cached_only and cached_rows < len(texts):
        raise NotCachedError(
            f"{len(texts) - cached_rows} of {len(texts)} {kind} texts are not in the embedding cache of {name} "
            f"({folder or 'no cache'})"
        )

    bar = _progress_bar(len(texts), cached_rows, f"embed {model_slug(name)} {kind}s", progress)
    try:
        parts, t_load, t_encode = _encode_plan(
            plan, texts, lambda: load_encoder(resolved, max_length, bf16), prompt, batch_size, bar
        )
    finally:
        bar.close()
    if parts:
        out = l2_normalize(np.concatenate(parts, axis=0))
    else:
        dim = load_encoder(resolved, max_length, bf16).dim if not texts else 0
        out = np.zeros((0, dim), np.float32)
    if stats is not None:
        stats.update(
            chunks=len(plan),
            chunks_cached=sum(a is not None for *_, a in plan),
            rows_encoded=len(texts) - cached_rows,
            seconds=round(time.perf_counter() - t0, 3),
            load_seconds=round(t_load, 3),
            encode_seconds=round(t_encode, 3),
            fingerprint=fingerprint,
            precision=precision,
            backend=resolved.backend,
            dim=int(out.shape[1]) if out.ndim == 2 else 0,
            cache_dir=str(folder) if folder else None,
        )
    return out


def _encode_plan(
    plan: list[tuple[int, int, Path | None, np.ndarray | None]],
    texts: list[str],
    load: Any,
    prompt: str,
    batch_size: int,
    bar: Any,
) -> tuple[list[np.ndarray], float, float]:
    """Every chunk of ``plan``: the cached ones as they are, the others encoded (the model loaded by ``load()`` at
    the first of them) and saved. Returns the chunks, the model's load seconds and the encoding seconds."""
    encoder = None
    parts: list[np.ndarray] = []
    t_load = t_encode = 0.0
    for s, e, path, arr in plan:
        if arr is None:
            if encoder is None:
                t = time.perf_counter()
                encoder = load()
                t_load = time.perf_counter() - t
            t = time.perf_counter()
            arr = _encode_sorted(encoder, texts[s:e], prompt, batch_size, bar)
            t_encode += time.perf_counter() - t
            if path is not None:
                _save_chunk(path, arr)
        parts.append(arr)
    return parts, t_load, t_encode


def _save_chunk(path: Path, arr: np.ndarray) -> None:
    """The chunk, then its sha256 next to it (``<chunk>.sha256``), both atomically."""
    from hardneg.artifacts import atomic_write_text, sha256_file

    atomic_save_npy(path, arr)
    atomic_write_text(path.with_suffix(".sha256"), sha256_file(path) + "\n")


def _load_chunk(path: Path, rows: int) -> np.ndarray | None:
    """A cached chunk, or None (recompute it) when it is missing, corrupt (sha256 differs from its ``.sha256``) or
    invalid; a chunk from before checksums is validated and gets its ``.sha256``."""
    from hardneg.artifacts import atomic_write_text, sha256_file

    if not path.exists():
        return None
    sidecar = path.with_suffix(".sha256")
    digest = sha256_file(path)
    if sidecar.exists() and sidecar.read_text(encoding="utf-8").strip() != digest:
        log.warning("cache chunk %s is corrupt (sha256 differs from %s): recomputing it", path, sidecar.name)
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # a torn or foreign file: recompute it
        log.warning("ignoring unreadable cache chunk %s (%s)", path, e)
        return None
    if arr.ndim != 2 or arr.shape[0] != rows or arr.dtype != np.float32 or not np.isfinite(arr).all():
        log.warning("ignoring invalid cache chunk %s (shape %s, dtype %s)", path, arr.shape, arr.dtype)
        return None
    if not sidecar.exists():
        with contextlib.suppress(OSError):  # a read-only cache still works
            atomic_write_text(sidecar, digest + "\n")
    return arr


def _encode_sorted(
    encoder: TorchEncoder | OnnxEncoder, texts: list[str], prompt: str, batch_size: int, bar
) -> np.ndarray:
    """Encode in length-sorted batches (less padding), return in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: np.ndarray | None = None
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        v = encoder.encode([texts[i] for i in idx], prompt, batch_size)
        if v.ndim != 2 or v.shape[0] != len(idx):
            raise RuntimeError(f"encoder returned shape {v.shape} for {len(idx)} texts")
        if out is None:
            out = np.empty((len(texts), v.shape[1]), np.float32)
        if not np.isfinite(v).all():
            raise RuntimeError(
                "encoder produced non-finite values (NaN/inf); check the model and precision settings"
            )
        out[idx] = v
        bar.update(len(idx))
    assert out is not None
    return l2_normalize(out)


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="doc",
        unit_scale=True,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )


# ------------------------------------------------------------------------------------------------ embed_dataset


def _model_manifest(
    m: Mapping[str, Any],
    slug: str,
    dim: int,
    n_docs: int,
    n_queries: int,
    corpus_sha: str,
    st_d: Mapping[str, Any],
    st_q: Mapping[str, Any],
) -> dict[str, Any]:
    """One model's ``manifest.json``: what was embedded, by which model and precision, and how long it took."""
    return {
        "model": str(m["name"]),
        "slug": slug,
        "backend": st_d["backend"],
        "precision": st_d["precision"],
        "model_fingerprint": st_d["fingerprint"],
        "dim": dim,
        "weight": float(m.get("weight", 1.0) or 0.0),
        "max_length": int(_model_cfg_value(m, "max_length", 256)),
        "query_prompt": str(_model_cfg_value(m, "query_prompt", "")),
        "document_prompt": str(_model_cfg_value(m, "document_prompt", "")),
        "n_docs": n_docs,
        "n_queries": n_queries,
        "corpus_sha256": corpus_sha,
        "timing": {
            "corpus_s": st_d["seconds"],
            "queries_s": st_q["seconds"],
            "corpus_docs_per_s": round(st_d["rows_encoded"] / st_d["encode_seconds"], 2)
            if st_d["rows_encoded"] and st_d["encode_seconds"]
            else None,
            "model_load_s": round(st_d["load_seconds"] + st_q["load_seconds"], 3),
            "corpus_chunks_cached": f"{st_d['chunks_cached']}/{st_d['chunks']}",
            "queries_chunks_cached": f"{st_q['chunks_cached']}/{st_q['chunks']}",
        },
    }


def embed_dataset(
    dataset, params: Mapping[str, Any], out_dir: str | os.PathLike, progress: bool = True
) -> dict[str, Any]:
    """Embed the whole corpus (``doc.full_text``) and every query with every model of ``params['embed']['models']``.

    Writes ``out_dir/<model-slug>/{corpus,queries}.npy``, ``ids.json``, ``manifest.json`` per model, plus
    ``out_dir/manifest.json`` (model order, corpus hash) and ``out_dir/lineage.json``. Returns the top manifest.
    """
    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage, sha256_file, write_lineage

    cfg = params["embed"]
    models = cfg.get("models") or []
    if not models:
        raise ConfigError("params embed.models is empty: configure at least one embedding model")
    slugs = [model_slug(str(m["name"])) for m in models]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"embed.models lists the same model twice: {[str(m['name']) for m in models]}")
    doc_ids = list(dataset.corpus)
    query_ids = list(dataset.queries)
    doc_texts = [dataset.corpus[d].full_text for d in doc_ids]
    query_texts = [dataset.queries[q].text for q in query_ids]
    corpus_file = Path(dataset.root) / "corpus.jsonl"
    corpus_sha = sha256_file(corpus_file) if corpus_file.exists() else texts_hash(doc_texts)
    cache = cfg.get("cache_dir")
    chunk = int(cfg.get("chunk_size") or 512)
    from hardneg.hw import use_bf16

    bf16 = use_bf16(cfg["bf16"])
    with staged_output(out_dir, "hardneg embed") as out:  # published (with checksums) when complete
        entries = []
        for m, slug in zip(models, slugs, strict=True):
            st_d: dict[str, Any] = {}
            st_q: dict[str, Any] = {}
            D = embed_texts(
                doc_texts, m, cache, "document", progress, chunk_size=chunk, bf16=bf16, stats=st_d
            )
            Q = embed_texts(query_texts, m, cache, "query", progress, chunk_size=chunk, bf16=bf16, stats=st_q)
            mdir = out / slug
            atomic_save_npy(mdir / "corpus.npy", D)
            atomic_save_npy(mdir / "queries.npy", Q)
            atomic_write_json(mdir / "ids.json", {"doc_ids": doc_ids, "query_ids": query_ids})
            man = _model_manifest(
                m, slug, int(D.shape[1]), len(doc_ids), len(query_ids), corpus_sha, st_d, st_q
            )
            atomic_write_json(mdir / "manifest.json", man)
            entries.append(man)
        top = {
            "models": [e["slug"] for e in entries],
            "entries": entries,
            "corpus_sha256": corpus_sha,
            "data_dir": str(dataset.root),
        }
        atomic_write_json(out / "manifest.json", top)
        lin = current_lineage(None)
        lin.params_hash = params_hash(dict(params), ["embed"])
        lin = lin.derive(
            corpus_sha256=corpus_sha, **{f"model:{e['slug']}": e["model_fingerprint"] for e in entries}
        )
        write_lineage(out, lin)
    return top
