"""hardneg: domain corpus -> hard negatives (arXiv 2505.18366 + guards) -> cross-encoder reranker -> ONNX -> KServe.

The package holds all logic as plain typed functions, one module per concern. It has no import-time side effects;
heavy dependencies (torch, faiss, GX, kserve, kfp) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
