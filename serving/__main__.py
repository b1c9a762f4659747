"""Container entry point: ``python -m serving --model_dir /mnt/models --http_port 8080 [--model_name NAME]``.

Takes KServe's own server flags (``--http_port``, ``--model_name``, ``--enable_grpc``...) plus ``--model_dir``,
``--host`` (default 0.0.0.0, KServe's behaviour; use 127.0.0.1 locally), ``--variant`` (int8|fp32; default: the
export's ``served_variant``, chosen at export by params ``serve.variant``),
``--runtime`` (auto|openvino|onnxruntime; default: the export's policy, params ``serve.runtime`` at export, recorded
in metadata.json ``serving``: under ``auto`` the gated candidates are timed on this node for up to params
``serve.select_seconds`` and the fastest is served), ``--precision`` (fp32|bf16|int8: only candidates of that
precision; with an explicit runtime, served as asked), ``--intra_op_threads`` (default: the container's CPU limit), ``--doc_cache_size`` (bi-encoder exports: document embeddings kept; default params
``serve.doc_cache_size``), ``--batch_window_ms`` / ``--max_batch_texts`` (batching across requests, default params
``serve.batch_window_ms`` / ``serve.max_batch_texts``; window 0: off) and ``--config`` (params.yaml: the ``serve``
limits). gRPC is off unless ``--enable_grpc true``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from serving import clean_argv

with clean_argv():
    from kserve import model_server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving", parents=[model_server.parser], description=__doc__
    )
    parser.add_argument("--model_dir", default="/mnt/models", help="a `hardneg export` folder")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (KServe binds 0.0.0.0)")
    parser.add_argument(
        "--variant",
        default=None,
        choices=["int8", "fp32"],
        help="ONNX graph to serve (default: the export's served_variant)",
    )
    parser.add_argument(
        "--runtime",
        default=None,
        choices=["auto", "openvino", "onnxruntime"],
        help="inference runtime; auto: time the export's gated candidates here and serve the fastest "
        "(default: the export's policy, metadata.json serving)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "int8"],
        help="inference precision (bf16: OpenVINO on the fp32 graph; default: the chosen candidate's)",
    )
    parser.add_argument(
        "--intra_op_threads",
        type=int,
        default=None,
        help="inference threads (default: params serve.intra_op_threads, else the container's CPU limit)",
    )
    parser.add_argument(
        "--doc_cache_size",
        type=int,
        default=None,
        help="bi-encoder exports: LRU cache of document embeddings, entries (0: off; default params serve.doc_cache_size)",
    )
    parser.add_argument(
        "--batch_window_ms",
        type=float,
        default=None,
        help="batching across requests: after a batch of several requests, wait up to this long for the rest of "
        "the round (0: off, each request scored alone; default params serve.batch_window_ms)",
    )
    parser.add_argument(
        "--max_batch_texts",
        type=int,
        default=None,
        help="queries + documents per batch at most (default params serve.max_batch_texts)",
    )
    parser.add_argument(
        "--config", default=None, help="params.yaml with a `serve` section (default: packaged defaults)"
    )
    parser.set_defaults(enable_grpc=False, model_name=None)
    return parser


def _doc_cache_size(flag: int | None, serve_params: dict) -> int:
    from hardneg.errors import HardnegError

    size = int(serve_params.get("doc_cache_size") or 0) if flag is None else int(flag)
    if size < 0:
        raise HardnegError(f"doc_cache_size must be >= 0 (0: off), got {size}")
    return size


def _flag_or(flag: float | int | None, default: float | int) -> float | int:
    return default if flag is None else flag


def main(argv: list[str] | None = None) -> int:
    from hardneg.config import load_params
    from hardneg.errors import HardnegError
    from hardneg.rerank import RUNTIME_CACHE_ENV
    from serving.predictor import HardnegReranker, Limits
    from serving.server import serve

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers != 1:
        print(
            "error: --workers must be 1 (scale with replicas; onnxruntime already uses every core)",
            file=sys.stderr,
        )
        return 2
    try:
        params = load_params(args.config)
        name = args.model_name or params["serve"]["model_name"]
        serve_params = params["serve"]
        # OpenVINO sessions read their per-shape kernel cache from this variable (hardneg.rerank
        # .openvino_runtime_cache): the container's own setting wins, else this config's serve.openvino_runtime_cache
        os.environ.setdefault(RUNTIME_CACHE_ENV, str(serve_params["openvino_runtime_cache"]))
        model = HardnegReranker(
            name,
            args.model_dir,
            variant=args.variant,
            limits=Limits.from_params(params),
            intra_op_threads=args.intra_op_threads or serve_params.get("intra_op_threads"),
            doc_cache_size=_doc_cache_size(args.doc_cache_size, serve_params),
            runtime=args.runtime,
            precision=args.precision,
            select_seconds=float(serve_params["select_seconds"]),
            batch_window_ms=_flag_or(args.batch_window_ms, serve_params["batch_window_ms"]),
            max_batch_texts=_flag_or(args.max_batch_texts, serve_params["max_batch_texts"]),
        )
        serve(model, http_port=args.http_port, host=args.host, enable_grpc=args.enable_grpc)
    except HardnegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
