"""The one hardneg CLI (typer). Logging is configured only here; heavy imports happen inside each command so
``hardneg --help`` stays fast. A :class:`HardnegError` prints its message (no traceback) and exits 1."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hardneg.errors import HardnegError

app = typer.Typer(
    name="hardneg",
    help="Hard-negative mining -> cross-encoder reranker -> ONNX -> KServe, as a Kubeflow pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="params.yaml (default: ./params.yaml if present)")
]


class _State:
    config: Path | None = None
    params: dict[str, Any] | None = None
    verbose: bool = False
    quiet_env: list[str] = []  # env vars _quiet_libraries set


state = _State()


@app.callback()
def main(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in (
        "httpx",
        "urllib3",
        "filelock",
        "huggingface_hub",
        "sentence_transformers",
        "numexpr",
        "faiss.loader",
        "bm25s",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    state.quiet_env = [] if verbose else _quiet_libraries()
    state.config = config
    state.params = None
    state.verbose = verbose


def _quiet_libraries() -> list[str]:
    """Default (no -v): keep library chatter out of the terminal. Env vars are inherited by the pipeline's task
    processes; -v leaves everything on. Returns the env vars it set (``pipeline run --verbose`` drops them)."""
    import os
    import warnings

    set_here = []
    for var, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),  # advisory warnings and "Loading weights" notes
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),  # the fork warning of HF tokenizers
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),  # tqdm bars of model loading (ours have --no-progress)
    ):
        if var not in os.environ:
            os.environ[var] = value
            set_here.append(var)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for noisy in ("sentence_transformers", "transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return set_here


def get_params() -> dict[str, Any]:
    from hardneg.config import load_params

    if state.params is None:
        state.params = load_params(state.config)
    return state.params


def get_settings() -> Any:
    """The typed settings of the params file (hardneg.settings.Settings): built here, at the door, for the stages."""
    from hardneg.settings import settings

    return settings(get_params())


def friendly_errors(fn):
    """Turn HardnegError into a one-line message and exit code 1 (never a traceback for user errors)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HardnegError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
            raise typer.Exit(1) from None
        except Exception as e:
            # a full disk inside a library (KFP, torch, onnx): one clear line, no traceback
            from hardneg.artifacts import is_no_space

            if not is_no_space(e):
                raise
            where = getattr(e, "filename", None)
            console.print(
                f"[bold red]error:[/] no space left{f' writing {where}' if where else ''} ({e}): free disk space "
                "and rerun the command; stage outputs are published whole or not at all, earlier ones are intact",
                highlight=False,
                markup=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")  # paths and ids stay whole (wrapped, never cut with an ellipsis)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    out.print(t)


# ------------------------------------------------------------------------------------------------------- commands
# The stage commands in pipeline order (validate, embed, reduce, retrieve, mine, train, evaluate, export), then
# serving, deployment and lineage, the pipeline and the quality study. Each calls one hardneg.stages function.


# ------------------------------------------------------------------------------------------------------- validate

_JsonOut = Annotated[Path | None, typer.Option("--json-out", help="also write the JSON report here")]
_DataDocs = Annotated[Path | None, typer.Option("--data-docs", help="build GX Data Docs in this folder")]


@app.command("validate")
@friendly_errors
def validate_cmd(
    data_dir: Annotated[Path | None, typer.Argument(help="BEIR folder (default: params data.dir)")] = None,
    json_out: _JsonOut = None,
    data_docs: _DataDocs = None,
) -> None:
    """Validate a BEIR folder (format + Great Expectations checks); exit 1 when any check fails: the `validate`
    stage (hardneg.stages.validate_stage)."""
    from hardneg.errors import DataValidationError
    from hardneg.stages import validate_stage

    settings = get_settings()
    root = data_dir if data_dir is not None else Path(settings.data.dir)
    try:
        summary = validate_stage(root, settings, json_out=json_out, data_docs_dir=data_docs)["report"]
    except DataValidationError as e:
        if e.summary is not None:
            _print_validation(root, e.summary, json_out)
        raise
    _print_validation(root, summary, json_out)
    out.print(f"[bold green]OK[/] {root} passed validation ({len(summary['warnings'])} warning(s))")


def _print_validation(root: Path, summary: dict[str, Any], json_out: Path | None) -> None:
    rows = [
        [
            f["file"],
            f"{f['check']} ({f['severity']})",
            f["count"],
            ", ".join(map(str, f["examples"])),
            f["message"],
        ]
        for f in summary["failures"] + summary["warnings"]
    ]
    if rows:
        columns = ["file", "check", "rows failing", "example ids", "message"]
        print_table(f"validation of {root}", columns, rows)
    st = summary.get("stats", {})
    parts = [f"{st[k]['count']} {k}" for k in ("docs", "queries") if k in st]
    parts += [f"{s}: {v['rows']} qrels / {v['queries']} queries" for s, v in st.get("qrels", {}).items()]
    if parts:
        out.print(f"{root}: " + "; ".join(parts), highlight=False)
    if summary.get("data_docs"):
        out.print(f"GX Data Docs: {summary['data_docs']}", highlight=False)
    if json_out is not None:
        out.print(f"wrote {json_out}", highlight=False)


# ------------------------------------------------------------------------------- embed / reduce / retrieve / mine

_EmbDataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="BEIR folder (default: params data.dir)")
]


@app.command("embed")
@friendly_errors
def embed_cmd(
    data_dir: _EmbDataDir = None,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("runs/embeddings"),
    no_progress: Annotated[bool, typer.Option("--no-progress", help="hide progress bars")] = False,
) -> None:
    """Embed the corpus and all queries with every model in params embed.models (cached, resumable): the `embed`
    stage (hardneg.stages.embed_stage)."""
    import time

    from hardneg.stages import embed_stage

    settings = get_settings()
    root = data_dir if data_dir is not None else Path(settings.data.dir)
    t0 = time.perf_counter()
    man = embed_stage(root, settings, None, out_dir, progress=not no_progress)["manifest"]
    rows = [
        [
            e["model"],
            e["backend"],
            e["precision"],
            e["dim"],
            e["n_docs"],
            e["n_queries"],
            f"{e['timing']['corpus_s'] + e['timing']['queries_s']:.1f}",
            e["timing"]["corpus_docs_per_s"] or "cached",
            e["timing"]["corpus_chunks_cached"],
        ]
        for e in man["entries"]
    ]
    cols = ["model", "backend", "precision", "dim", "docs", "queries", "seconds", "docs/s", "cached chunks"]
    print_table(f"embeddings -> {out_dir}", cols, rows)
    out.print(f"done in {time.perf_counter() - t0:.1f}s", highlight=False)


@app.command("reduce")
@friendly_errors
def reduce_cmd(
    emb_dir: Annotated[Path, typer.Option("--emb-dir", help="output of `hardneg embed`")] = Path(
        "runs/embeddings"
    ),
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("runs/reduced"),
) -> None:
    """Concatenate the per-model vectors and project them with PCA (variance target or fixed dimension): the
    `reduce` stage (hardneg.stages.reduce_stage)."""
    from hardneg.stages import reduce_stage

    st = reduce_stage([emb_dir], get_settings(), out_dir)
    rows = [
        [
            " + ".join(f"{m}:{d}" for m, d in zip(st["models"], st["part_dims"], strict=True)),
            st["input_dim"],
            st["n_components"],
            f"{st['explained_variance_kept']:.4f}",
            st["fit_rows"],
            st["n_docs"],
            st["n_queries"],
            f"{st['seconds']:.1f}",
        ]
    ]
    cols = [
        "models:dims",
        "input dim",
        "kept dims",
        "variance kept",
        "fit rows",
        "docs",
        "queries",
        "seconds",
    ]
    print_table(f"PCA -> {out_dir}", cols, rows)


_RetrievedDir = Annotated[
    Path,
    typer.Option("--retrieved-dir", help="output of `hardneg retrieve` (the splits and the first stage)"),
]


@app.command("retrieve")
@friendly_errors
def retrieve_cmd(
    reduced_dir: Annotated[Path, typer.Option("--reduced-dir", help="output of `hardneg reduce`")] = Path(
        "runs/reduced"
    ),
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("runs/retrieved"),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="BEIR folder (default: params data.dir)")
    ] = None,
) -> None:
    """Decide the splits (dev carved / topped up from train) and the first stage (params evaluate.first_stage; the
    hybrid's BM25 weight chosen on dev) of the dev and test queries, once: the `retrieve` stage
    (hardneg.stages.retrieve_stage). mine, train, evaluate and export read its folder."""
    from hardneg.stages import retrieve_stage

    st = retrieve_stage(_dataset_root(data_dir), reduced_dir, get_settings(), out_dir)
    top_up = (st["splits"].get("top_up") or {}).get("moved", 0)
    rows = [
        ["first stage", st["name"]],
        ["BM25 weight (dev)", st["bm25_weight"]],
        ["candidates per query", st["top_k"]],
        ["queries", ", ".join(f"{s} {n}" for s, n in st["queries"].items())],
        ["dev carved from train", st["splits"].get("carved", False)],
        ["dev topped up from train", top_up],
    ]
    print_table(f"first stage -> {out_dir}", ["", ""], rows)


@app.command("mine")
@friendly_errors
def mine_cmd(
    reduced_dir: Annotated[Path, typer.Option("--reduced-dir", help="output of `hardneg reduce`")] = Path(
        "runs/reduced"
    ),
    retrieved_dir: _RetrievedDir = Path("runs/retrieved"),
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("runs/mined"),
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy", help="paper | positive-aware | hybrid | rank-window | random | bm25 | st-default"
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="qrels split to mine (default: params data.train_split)")
    ] = None,
    data_dir: _EmbDataDir = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="hide progress bars")] = False,
) -> None:
    """Mine hard negatives for every (query, positive) pair of the train split: the `mine` stage (policies: README)."""

    from hardneg.stages import mine_stage

    settings = get_settings()
    if policy:
        settings = settings.override({"mine": {"policy": policy}})
    if split:
        settings = settings.override({"data": {"train_split": split}})
    root = data_dir if data_dir is not None else Path(settings.data.dir)
    st = mine_stage(root, reduced_dir, retrieved_dir, settings, out_dir, progress=not no_progress)
    rej = ", ".join(f"{k}={v}" for k, v in (st.get("rejected") or {}).items() if v) or "none"
    keys = (
        "policy",
        "positive_reading",
        "split",
        "pairs",
        "pairs_without_negative",
        "queries_without_negative",
        "rescans",
        "seconds",
    )
    table = [[k.replace("_", " "), st[k]] for k in keys if k in st]
    table += [["negatives per pair", st.get("negatives_per_pair_mean")], ["rejected per rule", rej]]
    for reading, c in (
        st.get("readings") or {}
    ).items():  # both mine.positive_reading values, same candidates
        table.append(
            [
                f"reading {reading}",
                f"{c['pairs_with_negative']}/{c['pairs']} pairs with a negative, "
                f"{c['queries_without_negative']} queries without",
            ]
        )
    print_table(f"mined negatives -> {out_dir}", ["", ""], table)


# ----------------------------------------------------------------------------------------------- train / evaluate


def _dataset_root(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else Path(get_params()["data"]["dir"])


@app.command("train")
@friendly_errors
def train_cmd(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="BEIR folder (default: params data.dir)")
    ] = None,
    negatives: Annotated[
        Path, typer.Option("--negatives", help="folder of negatives.jsonl from `hardneg mine`")
    ] = Path("runs/mined"),
    retrieved_dir: _RetrievedDir = Path("runs/retrieved"),
    out_dir: Annotated[Path, typer.Option("--out", help="model folder to write")] = Path("runs/model"),
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="override params train.max_steps")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="override params train.seed")] = None,
) -> None:
    """Train the reranker of params train.kind (bi-encoder | cross-encoder) on mined negatives: the `train` stage."""

    from hardneg.stages import train_stage

    changes = {k: v for k, v in {"max_steps": max_steps, "seed": seed}.items() if v is not None}
    settings = get_settings().override({"train": changes})
    negatives = negatives.parent if negatives.is_file() else negatives
    res = train_stage(_dataset_root(data_dir), retrieved_dir, negatives, settings, out_dir)
    print_table(f"reranker -> {out_dir}", ["", ""], [[k, v] for k, v in res.items()])


@app.command("evaluate")
@friendly_errors
def evaluate_cmd(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="BEIR folder (default: params data.dir)")
    ] = None,
    model_dir: Annotated[Path, typer.Option("--model-dir", help="trained model folder (read only)")] = Path(
        "runs/model"
    ),
    onnx_dir: Annotated[
        Path | None,
        typer.Option("--onnx-dir", help="evaluate an export folder instead (what is served, its variant)"),
    ] = None,
    retrieved_dir: _RetrievedDir = Path("runs/retrieved"),
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder for metrics.json, per_query.json and fusion.json")
    ] = Path("runs/eval"),
) -> None:
    """Evaluate the first stage (params evaluate.first_stage: the no-training baseline), the reranker and the served
    fusion (weight chosen on dev) on the test split: the `evaluate` stage (or the served evaluation of an export)."""
    from hardneg.stages import evaluate_stage, served_evaluation_stage

    settings = get_settings()
    if onnx_dir is not None:
        res = served_evaluation_stage(_dataset_root(data_dir), retrieved_dir, onnx_dir, settings, out_dir)
    else:
        if not (model_dir / "config.json").exists():
            raise HardnegError(f"no trained model in {model_dir} (run `hardneg train` first)")
        res = evaluate_stage(_dataset_root(data_dir), retrieved_dir, model_dir, settings, out_dir)
    print_table(f"test split -> {out_dir}", ["", ""], [[k, v] for k, v in res.items()])


# ------------------------------------------------------------------------------------------------ export & serve


@app.command("export")
@friendly_errors
def export_cmd(
    model_dir: Annotated[
        Path,
        typer.Option(
            "--model-dir",
            help="a trained model folder (hardneg train): CrossEncoder or bi-encoder SentenceTransformer",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="export folder to write (replaced if it is an earlier export)")
    ],
    evaluation_dir: Annotated[
        Path,
        typer.Option(
            "--evaluation", help="`hardneg evaluate` output: its fusion.json (weight, gate, depth) is served"
        ),
    ] = Path("runs/eval"),
    no_fusion: Annotated[
        bool,
        typer.Option("--no-fusion", help="export without a fusion: the server returns reranker scores only"),
    ] = False,
    retrieved_dir: Annotated[
        Path,
        typer.Option(
            "--retrieved-dir",
            help="`hardneg retrieve` output: the first stage whose dev top is the int8 gate",
        ),
    ] = Path("runs/retrieved"),
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="BEIR folder with dev texts + qrels (default: params data.dir)"),
    ] = None,
    no_dev: Annotated[
        bool, typer.Option("--no-dev", help="no dev set: skip the int8 MRR@10 gate (fp32 parity still gates)")
    ] = False,
    version: Annotated[
        str | None, typer.Option(help="version recorded in metadata.json (default: model fingerprint)")
    ] = None,
) -> None:
    """ONNX fp32 + int8 export with parity gates (fp32 vs PyTorch scores or cosines; int8 MRR@10 on the served first
    stage's dev candidates, as the pipeline does), serving the fusion `hardneg evaluate` chose (--evaluation);
    writes metadata.json: the `export` stage (hardneg.stages.export_stage). The kind (cross-encoder | bi-encoder)
    comes from the folder's model card (hardneg_model.json, hardneg.model_card.read_card)."""
    from hardneg.stages import export_stage

    settings = get_settings()
    root = _dataset_root(data_dir)
    if not no_dev and not (root / "qrels").is_dir():
        raise HardnegError(
            f"no dev data at {root} (qrels/ missing): pass --data-dir, or --no-dev to skip the int8 MRR gate"
        )
    evaluation = None if no_fusion else evaluation_dir
    res = export_stage(
        root, retrieved_dir, model_dir, evaluation, settings, out, version=version, dev=not no_dev
    )
    print_table(f"exported {model_dir} -> {out}", ["", ""], _export_rows(res["parity"], res["metadata"]))


def _export_rows(p: dict[str, Any], m: dict[str, Any]) -> list[list[Any]]:
    """The export summary table: parity numbers, files, the served variant."""
    rows = [
        ["kind", f"{p.get('kind')} (score: {p['fp32'].get('score')})"],
        ["version", m.get("version")],
        [
            "fp32 max |diff| vs PyTorch",
            f"{p['fp32']['max_abs_diff']:.2e} (gate {p['fp32']['threshold']:g}, {p['sample']['pairs']} pairs)",
        ],
        ["int8 max |diff| vs PyTorch", f"{p['int8']['max_abs_diff']:.2e}"],
    ]
    if "mrr@10_drop" in p["int8"]:
        i8 = p["int8"]
        rows.append(
            [
                "int8 MRR@10 drop",
                f"{i8['mrr@10_drop']:+.4f} (fp32 {i8['mrr@10_fp32']:.4f}, int8 {i8['mrr@10_int8']:.4f}; gate {i8['threshold_mrr_drop']:g})",
            ]
        )
    else:
        rows.append(["int8 MRR@10 gate", p["int8"].get("skipped", "skipped")])
    for v, info in m.get("variants", {}).items():
        rows.append([f"{v} file", f"{info['file']} ({info['bytes'] / 1e6:.1f} MB)"])
    if m.get("document_graph"):  # bi-encoder tune: query: documents go through the base model's graph
        doc = m["document_graph"]
        rows.append(
            ["document encoder", f"{m.get('document_encoder')} ({', '.join(doc['variants'].values())})"]
        )
    cv = p.get("corpus_vectors")
    if cv and cv.get("shipped"):  # tune: query: the corpus's document vectors for the server's cache
        rows.append(
            [
                "corpus vectors",
                f"{cv['count']} x {cv['dim']} fp16 ({cv['bytes'] / 1e6:.1f} MB), max L2 vs the document graph "
                f"{cv['max_l2_diff']:.2g} (gate {cv['threshold_l2']:g}, {cv['documents']} documents)",
            ]
        )
    elif cv:
        rows.append(["corpus vectors", f"not shipped: {cv['reason']}"])
    sv = p.get("served_variant", {})
    rows.append(["served variant", f"{sv.get('served')} (serve.variant: {sv.get('policy')})"])
    return rows


def _import_serving():
    """``serving`` is installed with hardneg (pyproject packages); say how to fix an install without it."""
    try:
        import serving  # noqa: F401
    except ImportError:
        raise HardnegError(
            "the `serving` package is not installed: `pip install -e '.[serve]'` from the checkout (or use the image)"
        ) from None


@app.command("serve")
@friendly_errors
def serve_cmd(
    model_dir: Annotated[Path, typer.Option("--model-dir", help="a `hardneg export` folder")],
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP port")] = 8080,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="name in the URL (default: params serve.model_name)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind (0.0.0.0 for all interfaces)")] = "127.0.0.1",
    variant: Annotated[
        str | None, typer.Option(help="int8 | fp32 (default: the export's served_variant, see metadata.json)")
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="auto | onnxruntime | openvino (auto: time the export's gated candidates on this machine and serve "
            "the fastest; default: the export's policy, metadata.json serving)"
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="fp32 | bf16 | int8 (default: the chosen candidate's)"),
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(help="inference threads (default: params serve.intra_op_threads, else the CPU limit)"),
    ] = None,
    doc_cache_size: Annotated[
        int | None,
        typer.Option(
            "--doc-cache-size",
            min=0,
            help="bi-encoder exports: document embeddings kept in an LRU cache (0: off; default: params serve.doc_cache_size)",
        ),
    ] = None,
    batch_window_ms: Annotated[
        float | None,
        typer.Option(
            "--batch-window-ms",
            min=0,
            help="batching across requests: the longest a batch waits for the rest of a round of concurrent "
            "requests (0: off; default: params serve.batch_window_ms)",
        ),
    ] = None,
    max_batch_texts: Annotated[
        int | None,
        typer.Option(
            "--max-batch-texts",
            min=1,
            help="queries + documents per batch at most (default: params serve.max_batch_texts)",
        ),
    ] = None,
) -> None:
    """Run the KServe reranker server (V1 + V2 REST, /metrics) on an export folder (cross-encoder or bi-encoder);
    no torch needed."""
    _import_serving()
    from serving import clean_argv

    with clean_argv():  # kserve parses sys.argv when imported (docs/stack.md 2.4)
        from serving.predictor import HardnegReranker, Limits
        from serving.server import serve
    params = get_params()
    if runtime is not None and runtime not in ("auto", "onnxruntime", "openvino"):
        raise HardnegError(f"--runtime must be auto, onnxruntime or openvino, got {runtime!r}")
    if precision is not None and precision not in ("fp32", "bf16", "int8"):
        raise HardnegError(f"--precision must be fp32, bf16 or int8, got {precision!r}")
    if variant is not None and variant not in ("int8", "fp32"):
        raise HardnegError(f"--variant must be int8 or fp32, got {variant}")
    model = HardnegReranker(
        model_name or params["serve"]["model_name"],
        str(model_dir),
        variant=variant,
        runtime=runtime,
        precision=precision,
        select_seconds=float(params["serve"]["select_seconds"]),
        limits=Limits.from_params(params),
        intra_op_threads=intra_op_threads or params["serve"]["intra_op_threads"],
        doc_cache_size=params["serve"]["doc_cache_size"] if doc_cache_size is None else doc_cache_size,
        batch_window_ms=params["serve"]["batch_window_ms"] if batch_window_ms is None else batch_window_ms,
        max_batch_texts=params["serve"]["max_batch_texts"] if max_batch_texts is None else max_batch_texts,
    )
    serve(model, http_port=http_port, host=host)


# --------------------------------------------------------------------------------------- deployment: release & lineage


@app.command("release")
@friendly_errors
def release_cmd(
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="exported model folder (metadata.json) or one with lineage.json"),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="model version (default: the export's metadata.json version)"),
    ] = None,
    canary: Annotated[
        int | None,
        typer.Option("--canary", help="canaryTrafficPercent 1..99 (default params release.canary_percent)"),
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote", help="100% to VERSION (canaryTrafficPercent removed)")
    ] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="back to the previous version in the releases history")
    ] = False,
    overlay: Annotated[
        str | None, typer.Option("--overlay", help="k8s/overlays/<name> (default params release.overlay)")
    ] = None,
    image_tag: Annotated[
        str | None, typer.Option("--image-tag", help="serving image tag (default: the overlay's)")
    ] = None,
    storage_uri: Annotated[
        str | None,
        typer.Option("--storage-uri", help="model URI (default params release.storage_uri.<overlay>)"),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="release folder (default k8s/releases/<version>/)")
    ] = None,
    releases_dir: Annotated[
        Path | None, typer.Option("--releases-dir", help="history.json + default --out root")
    ] = None,
    k8s_dir: Annotated[
        Path | None, typer.Option("--k8s-dir", help="folder holding base/ and overlays/")
    ] = None,
) -> None:
    """Render (kustomize), validate and record a canary / promote / rollback of the reranker InferenceService."""
    import dataclasses

    from hardneg.release import ReleaseSettings, release

    settings = ReleaseSettings.from_params(get_params())
    overrides = {"releases_dir": releases_dir, "k8s_dir": k8s_dir}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    res = release(
        version=version,
        model_dir=model_dir,
        canary=canary,
        promote=promote,
        rollback=rollback,
        overlay=overlay,
        image_tag=image_tag,
        storage_uri=storage_uri,
        out=out_dir,
        settings=settings,
    )
    rel = res.release
    rows = [
        ["action", rel.action + (f" (from {rel.previous})" if rel.previous else "")],
        ["version", rel.version],
        ["overlay", rel.overlay],
        ["canaryTrafficPercent", "removed" if rel.canary is None else rel.canary],
        ["traffic", rel.traffic],
        ["image", rel.effective_image or f"{rel.image}:{rel.image_tag or '<overlay tag>'}"],
        ["storage URI", rel.storage_uri],
        *[[k, v] for k, v in rel.annotations.items()],
        ["folder", str(res.out_dir)],
        [
            "validated",
            f"{res.documents} documents"
            if res.rendered
            else "no (kubectl not found: kustomization written only)",
        ],
    ]
    print_table(f"release {rel.version}", ["", ""], rows)
    console.print(f"apply with: kubectl apply -k {res.out_dir}", highlight=False)


@app.command("k8s-validate")
@friendly_errors
def k8s_validate_cmd(
    path: Annotated[
        Path,
        typer.Argument(help="manifest file, kustomization folder (rendered first) or folder of manifests"),
    ],
    kube_version: Annotated[
        str | None,
        typer.Option(
            "--kube-version", help="Kubernetes schema version (default params release.kubernetes_version)"
        ),
    ] = None,
) -> None:
    """Validate manifests offline: built-in kinds against Kubernetes schemas (strict), InferenceService by model walk."""
    from hardneg.k8s_validate import validate_path
    from hardneg.release import ReleaseSettings

    version = kube_version or ReleaseSettings.from_params(get_params()).kubernetes_version
    n, problems = validate_path(path, version)
    for p in problems:
        out.print(f"[red]FAIL[/] {p}", highlight=False)
    if problems:
        raise HardnegError(f"{len(problems)} problem(s) in {n} document(s) of {path}")
    out.print(f"[green]ok[/] {n} document(s) in {path} valid (Kubernetes {version})", highlight=False)


@app.command("lineage")
@friendly_errors
def lineage_cmd(
    model_dir: Annotated[Path, typer.Argument(help="model / export / run folder (searched 3 levels deep)")],
    release_path: Annotated[
        Path | None,
        typer.Option("--release", help="a release folder or manifest (InferenceService annotations)"),
    ] = None,
    dvc_file: Annotated[
        Path | None, typer.Option("--dvc-file", help="data.dvc (default: the repo's)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The lineage chain data.dvc -> mining -> model -> ONNX metadata -> InferenceService; exit 1 on disagreement."""
    from hardneg.audit import lineage_chain

    chain = lineage_chain(model_dir, release_path, dvc_file)
    if as_json:
        out.print_json(json.dumps(chain.to_dict()))
    else:
        rows = [
            [s.name, s.source, s.data_version or "-", s.git_commit or "-", s.params_hash or "-", s.status]
            for s in chain.stages
        ]
        print_table(
            f"lineage of {model_dir}",
            ["stage", "source", "data version", "git commit", "params hash", "status"],
            rows,
        )
        for w in chain.warnings:
            console.print(f"[yellow]note:[/] {w}", highlight=False)
        for p in chain.problems:
            console.print(f"[bold red]MISMATCH:[/] {p}", highlight=False)
    if not chain.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------------- data & lineage


@app.command("data-version")
@friendly_errors
def data_version_cmd(
    dvc_file: Annotated[Path, typer.Option(help="the DVC file to read")] = Path("data.dvc"),
) -> None:
    """Print the lineage later stages stamp into artifacts: data version (md5 in data.dvc), git commit, params hash."""
    from hardneg.lineage import current_lineage

    lin = current_lineage(get_params(), dvc_file)
    out.print_json(json.dumps(lin.to_dict()))


# ------------------------------------------------------------------------------------------------------- pipeline
# Thin adapter over pipelines/ (the only place hardneg's CLI imports kfp, lazily).

pipeline_app = typer.Typer(
    help="The Kubeflow pipeline: run locally (default main job), compile, submit.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")


def _print_dev_cv(m: dict[str, Any]) -> None:
    """The summary's out-of-sample dev line (``evaluate.gate_cv_folds``; absent when off or skipped)."""
    cv = {
        (n, p): m.get(f"dev_cv/{n}/{p}/mrr@10")
        for n in ("served", "first_stage")
        for p in ("all", "seen", "unseen")
    }
    if cv["served", "all"] is not None and cv["first_stage", "all"] is not None:
        cv_parts = [
            f"{p} {cv['served', p]:.4f} vs {cv['first_stage', p]:.4f}"
            for p in ("seen", "unseen")
            if cv["served", p] is not None and cv["first_stage", p] is not None
        ]
        out.print(
            "dev, cross-validated (the served choice re-made without the queries it is scored on): served "
            f"{cv['served', 'all']:.4f} vs no training {cv['first_stage', 'all']:.4f}"
            + (f" ({', '.join(cv_parts)})" if cv_parts else ""),
            highlight=False,
        )


def _print_pipeline_summary(s: dict[str, Any]) -> None:
    m = s.get("metrics") or {}
    sm = s.get("served_metrics") or {}
    fs = m.get("first_stage") or "first stage"
    systems = [
        (f"no training: {fs} (the baseline)", m, "first_stage"),
        *((f"no training: {n} alone", m, n) for n in ("bm25", "dense") if f"{n}/mrr@10" in m and n != fs),
        ("tuned model alone, retrieving from the whole corpus (torch)", m, "alone"),
        ("tuned model alone, reordering the candidates (torch)", m, "rerank"),
        ("served, torch (fused with the first stage)", m, "fusion"),
        (f"served, exported ONNX ({sm.get('variant', '?')})", sm, "fusion"),
    ]
    rows = []
    for label, src, key in systems:
        if f"{key}/mrr@10" in src:
            rows.append(
                [
                    label,
                    *(src.get(f"{key}/{k}", "-") for k in ("mrr@10", "seen/mrr@10", "unseen/mrr@10")),
                    *(src.get(f"{key}/{k}", "-") for k in ("ndcg@10", "mrr@3")),
                ]
            )
    n_seen, n_unseen = m.get("n/seen", "?"), m.get("n/unseen", "?")
    print_table(
        "hardneg pipeline: test split (every choice made on dev)",
        [
            "system",
            "MRR@10 all",
            f"seen (n={n_seen})",
            f"unseen (n={n_unseen})",
            "nDCG@10",
            "MRR@3",
        ],
        rows,
    )
    out.print(
        "seen: a relevant document of the query was a training positive; unseen: none was (what a model must "
        "generalise to)",
        highlight=False,
    )
    base = m.get("first_stage/mrr@10")
    served = sm.get("fusion/mrr@10", m.get("fusion/mrr@10"))
    if base is not None and served is not None:
        src = sm if "fusion/mrr@10" in sm else m
        by_part = [
            f"{part} {src[f'fusion/{part}/mrr@10'] - m[f'first_stage/{part}/mrr@10']:+.4f}"
            for part in ("seen", "unseen")
            if f"fusion/{part}/mrr@10" in src and f"first_stage/{part}/mrr@10" in m
        ]
        out.print(
            f"served vs the no-training baseline: {served - base:+.4f} MRR@10"
            + (f" ({', '.join(by_part)})" if by_part else "")
            + f"; quality gate {'passed' if m.get('gate_passed') else 'FAILED'}",
            highlight=False,
        )
    _print_dev_cv(m)
    where = [
        [
            "wall time",
            f"{s['seconds']} s" + (" (served from the KFP cache)" if s.get("served_from_cache") else ""),
        ],
        ["model version", s["model_version"]],
        ["data version", s["lineage"]["data_version"]],
        ["git commit", s["lineage"]["git_commit"]],
        ["params hash", s["lineage"]["params_hash"]],
        ["ONNX model", s.get("onnx_model") or "not exported (quality gate failed?)"],
        ["release manifests", s.get("release") or "-"],
        ["evaluation (metrics, HTML report)", s.get("evaluation") or "-"],
        ["trained model", s.get("model") or "-"],
        ["negatives", s.get("negatives") or "-"],
        ["full log (KFP executor output)", s.get("log") or "shown above (--verbose)"],
    ]
    print_table("where things are", ["what", "value"], where)


@pipeline_app.command("run")
@friendly_errors
def pipeline_run(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="your own BEIR corpus: validated, copied to data/<name>, `dvc add`ed (data.dvc), then run on "
            "(default: params data.dir, the bundled SciFact)",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="with --data: the folder under data/ (default: DIR's name)")
    ] = None,
    push: Annotated[
        bool,
        typer.Option("--push", help="with --data: also `dvc push` the new data version to the DVC remote"),
    ] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="disable KFP's local cache")] = False,
    summary_json: Annotated[Path | None, typer.Option(help="also write the run summary JSON here")] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="show everything KFP and the tasks print (default: one line per task start/finish; the rest in "
            "<pipeline_root>/logs/run-*.log)",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline locally with KFP's SubprocessRunner (no cluster) on params data.dir or --data DIR,
    offline."""
    from pipelines.byo import commit_hint
    from pipelines.run import run_local

    params = get_params()
    prepared = None
    if data is None and (name is not None or push):
        raise HardnegError("--name and --push go with --data DIR")
    if data is not None:
        from pipelines.byo import CorpusValidationError, prepare_corpus

        try:
            prepared = prepare_corpus(data, params, ".", name=name, push=push)
        except CorpusValidationError as e:
            _print_validation_failures(data, e.report)
            raise
        params = {**params, "data": {**params["data"], "dir": prepared.data_dir}}
        change = (
            f"data version {prepared.previous_version[:8]} -> {prepared.data_version[:8]}"
            if prepared.changed
            else f"data version {prepared.data_version[:8]} (unchanged)"
        )
        out.print(
            f"{data}: validated ({prepared.warnings} warning(s)), {prepared.action} {'to' if prepared.action in ('copied', 'replaced') else 'at'} {prepared.data_dir}, "
            f"`dvc add`ed: {change}" + ("; pushed to the DVC remote" if prepared.pushed else ""),
            highlight=False,
            soft_wrap=True,
        )
    if verbose:  # everything, also from the task processes (they inherit the env)
        import os

        for var in state.quiet_env:
            os.environ.pop(var, None)
    try:
        s = run_local(params, ".", caching=not no_cache, verbose=verbose or state.verbose)
    except HardnegError:
        for line in commit_hint(".", prepared):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        raise
    _print_pipeline_summary(s)
    if summary_json:
        summary_json.write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
    for line in commit_hint(".", prepared):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_validation_failures(root: Path, report: Any) -> None:
    rows = [
        [f.file, f"{f.check} ({f.severity})", f.count, ", ".join(f.examples), f.message]
        for f in report.failures + report.warnings
    ]
    if rows:
        print_table(
            f"validation of {root}", ["file", "check", "rows failing", "example ids", "message"], rows
        )


@pipeline_app.command("compile")
@friendly_errors
def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the KFP IR YAML")] = Path(
        "pipeline.yaml"
    ),
) -> None:
    """Compile the pipeline to KFP IR YAML for a cluster (kfp-kubernetes: cache PVC, DVC-remote secret)."""
    from pipelines.run import compile_pipeline

    p = compile_pipeline(get_params(), output, ".")
    out.print(f"wrote {p}")


@pipeline_app.command("submit")
@friendly_errors
def pipeline_submit(
    host: Annotated[
        str, typer.Option("--host", help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    ],
    experiment: Annotated[str, typer.Option(help="KFP experiment name")] = "hardneg",
    cron: Annotated[
        str | None, typer.Option(help="create a recurring run with this 6-field cron instead of one run")
    ] = None,
    package: Annotated[
        Path | None, typer.Option(help="a compiled pipeline YAML (default: compile now)")
    ] = None,
) -> None:
    """Create a run (or a recurring run) on a real KFP backend with kfp.Client."""
    from pipelines.run import submit

    res = submit(get_params(), host, package=package, experiment=experiment, recurring_cron=cron, repo=".")
    out.print_json(json.dumps(res))


# -------------------------------------------------------------------------------------------- the quality study


@app.command("compare")
@friendly_errors
def compare_cmd(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="BEIR folder (default: params data.dir)")
    ] = None,
    emb_dir: Annotated[Path, typer.Option("--emb-dir", help="`hardneg embed` output")] = Path(
        "runs/embeddings"
    ),
    out_dir: Annotated[Path, typer.Option("--out", help="results folder (resumes finished runs)")] = Path(
        "runs/quality"
    ),
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="comma-separated (default params compare.seeds)")
    ] = None,
    arms: Annotated[
        str | None, typer.Option("--arms", help="comma-separated (default params compare.arms)")
    ] = None,
) -> None:
    """The quality study: no-training baselines, then every negative strategy (arm) x seed at equal steps; writes
    quality.json, quality_per_query.json and quality_report.html (hardneg.quality)."""
    from hardneg.quality import QUALITY_JSON, REPORT_HTML, run_study

    try:
        seed_list = [int(x) for x in seeds.split(",")] if seeds else None
    except ValueError:
        raise HardnegError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    arm_list = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
    q = run_study(_dataset_root(data_dir), emb_dir, out_dir, get_params(), arms=arm_list, seeds=seed_list)
    rows = [
        [a, r["served"]["dev"]["mrr@10"]["mean"], r["served"]["test"]["mrr@10"]["mean"], r.get("p_vs_best")]
        for a, r in q["arms"].items()
    ]
    print_table(
        f"arms (best on dev: {q['best_policy']})", ["arm", "dev MRR@10", "test MRR@10", "p vs best"], rows
    )
    out.print(f"{out_dir / QUALITY_JSON}, report: {out_dir / REPORT_HTML}", highlight=False)
