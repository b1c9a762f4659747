"""KServe model server for the exported hardneg reranker (torch-free: onnxruntime + tokenizers).

``python -m serving --model_dir DIR --http_port N`` (container entry point) or ``hardneg serve``; see README.md.
Modules import kserve with a clean ``sys.argv`` (kserve parses it at import time).
"""
