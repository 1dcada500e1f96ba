"""The task's functions: lmms-eval's own MVBench prompt and scoring, and the video of each question
(``video`` in questions.jsonl, relative to this folder or absolute)."""

from pathlib import Path

from lmms_eval.tasks.mvbench.utils import (  # noqa: F401  lmms-eval's MVBench prompt and scoring
    mvbench_aggregate_results, mvbench_doc_to_text, mvbench_process_results)

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    path = Path(doc["video"])
    path = path if path.is_absolute() else HERE / path
    if not path.is_file():
        raise FileNotFoundError(f"aot_local_video: video {doc['video']!r} not found (looked at {path})")
    return [str(path)]
