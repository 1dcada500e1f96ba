"""The lmms-eval plugin through lmms-eval's own entry point (``python -m lmms_eval``), on a tiny local
checkpoint and a tiny local task that uses lmms-eval's MVBench prompt and scoring functions, with
real videos: registration by the ``lmms_eval.models`` entry point written in pyproject.toml (and
by ``LMMS_EVAL_PLUGINS``), config fields as model args, batch size 2, the method config and the
visual tokens in every logged sample, answers equal to ``aot.patch`` + ``generate`` called
directly, and two-process data parallelism (``accelerate launch``, CPU, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("lmms_eval")  # the `lmms` extra

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny  # noqa: E402
from aot.eval.engine import method_config  # noqa: E402
from test_eval_runner import videos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTS = ["a cat", "a dog", "red", "blue"]
MODEL_ARGS = "method=aot,retention=0.25,frames=8,local_layer=1,n_iters=20,windows=2x2"

TASK_YAML = """task: tiny_mvbench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.mvbench_doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
process_results: !function utils.mvbench_process_results
metric_list:
  - metric: mvbench_accuracy
    aggregation: !function utils.mvbench_aggregate_results
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    sub_task: tiny
    post_prompt: "Only give the best option.\\n"
"""
TASK_UTILS = """from lmms_eval.tasks.mvbench.utils import (  # noqa: F401  lmms-eval's own MVBench prompt and scoring
    mvbench_aggregate_results, mvbench_doc_to_text, mvbench_process_results)


def doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    return [doc["video"]]
"""


def entry_point_line() -> str:
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    return "".join(f"{k} = {v}\n" for k, v in eps.items())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint, a tiny task, and a dist-info carrying pyproject's entry point (what
    `pip install aot-video` writes), so lmms-eval finds the model exactly as it would installed."""
    tmp = tmp_path_factory.mktemp("lmms")
    ckpt = tmp / "ckpt"
    hf_tiny.model().save_pretrained(ckpt)
    hf_tiny.processor().save_pretrained(ckpt)
    task = tmp / "task"
    task.mkdir()
    vids = videos()
    docs = [{"video": str(vids[i % len(vids)]), "question": "what moves ?", "candidates": OPTS,
             "answer": OPTS[i % 4]} for i in range(4)]
    (task / "tiny.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (task / "tiny_mvbench.yaml").write_text(TASK_YAML.format(data=task / "tiny.jsonl"))
    (task / "utils.py").write_text(TASK_UTILS)
    dist = tmp / "ep" / "aot_video_test_ep-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aot-video-test-ep\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\n" + entry_point_line())
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp / "ep"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("LMMS_EVAL_PLUGINS", None)
    return {"tmp": tmp, "ckpt": ckpt, "task": task, "docs": docs, "env": env}


def lmms_eval_cmd(s, out: Path, launcher: list[str]) -> list[str]:
    return [*launcher, "-m", "lmms_eval", "--model", "aot_llava_onevision",
            "--model_args", f"pretrained={s['ckpt']},{MODEL_ARGS}", "--tasks", "tiny_mvbench",
            "--include_path", str(s["task"]), "--batch_size", "2", "--output_path", str(out), "--log_samples"]


def samples(out: Path) -> list[dict]:
    files = sorted(out.rglob("*_samples_tiny_mvbench.jsonl"))
    assert files, f"no samples under {out}"
    return sorted((json.loads(line) for line in files[-1].read_text().splitlines()), key=lambda d: d["doc_id"])


def direct_answer(s, doc) -> str:
    """The same question through aot.patch and generate, one video, no batching, no lmms-eval."""
    from lmms_eval.tasks.mvbench.utils import mvbench_doc_to_text

    from aot.video import read_frames

    model = hf_tiny.model()
    proc = hf_tiny.processor()
    text = mvbench_doc_to_text(doc, {"post_prompt": "Only give the best option.\n"})
    frames = read_frames(doc["video"], 8).frames
    inputs = proc(text=f"<video>\n{text}", videos=[frames], return_tensors="pt", do_sample_frames=False)
    aot.patch(model, aot.AOTConfig(retention=0.25, n_iters=20, windows=(2, 2)), local_layer=1)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def single(setup):
    out = setup["tmp"] / "out1"
    res = subprocess.run(lmms_eval_cmd(setup, out, [sys.executable]), env=setup["env"], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return out, res


def test_plugin_through_lmms_eval_entry_point(setup, single):
    out, res = single
    got = samples(out)
    assert [d["doc_id"] for d in got] == [0, 1, 2, 3]
    budget = aot.budget(0.25, 8, 16)
    for d in got:
        info = d["token_counts"][0]["aot"]
        assert info["method"] == "aot" and info["visual_tokens"] == budget + 1  # + the video's newline
        assert info["config"] == {**aot.AOTConfig(retention=0.25, n_iters=20).to_dict(), "windows": [2, 2]}
        assert info["frames"] == 8
        assert "mvbench_accuracy" in d  # the score sits beside it
    # the first answers equal the direct call (batch of 2 with left padding vs one video alone)
    for d in got[:2]:
        assert d["filtered_resps"] == direct_answer(setup, setup["docs"][d["doc_id"]]), d["doc_id"]
    results = json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())
    assert "tiny_mvbench" in results["results"]
    assert "n_iters=20" in results["config"]["model_args"]


def test_plugin_data_parallel_two_cpu_processes(setup, single):
    out = setup["tmp"] / "out_dp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29531"]
    env = {**setup["env"], "CUDA_VISIBLE_DEVICES": ""}  # CPU processes (gloo) even on a GPU machine
    res = subprocess.run(lmms_eval_cmd(setup, out, launcher), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    log = res.stdout + res.stderr
    assert "Running on rank 1" in log
    dp = samples(out)
    ref = samples(single[0])
    assert [(d["doc_id"], d["filtered_resps"], d["token_counts"][0]["aot"]) for d in dp] == \
           [(d["doc_id"], d["filtered_resps"], d["token_counts"][0]["aot"]) for d in ref]


def test_legacy_plugins_variable_and_registry(setup):
    code = ("from lmms_eval.models import get_model, get_model_manifest;"
            "c = get_model('aot_llava_onevision'); print(c.__module__, c.__name__, c.is_simple)")
    env = {k: v for k, v in setup["env"].items()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # no entry point
    env["LMMS_EVAL_PLUGINS"] = "aot"
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "AOTLlavaOneVision True" in res.stdout


def test_model_args_are_config_fields():
    m, cfg = method_config("aot", 0.1, {"n_iters": 50.0, "windows": "2x4", "tol": "none", "mass": "literal"})
    assert (cfg.retention, cfg.n_iters, cfg.windows, cfg.tol, cfg.mass) == (0.1, 50, (2, 4), None, "literal")
    m, cfg = method_config("visionzip", "0.25", {"merge": "mean", "dominant_share": 0.5})
    assert (m.name, cfg.retention, cfg.merge, cfg.dominant_share) == ("visionzip", 0.25, "mean", 0.5)
    assert method_config("vanilla") == (None, None)
    for method, kw, msg in [("aot", {"nope": 1}, "has no field 'nope'"), ("aot", {"n_iters": "x"}, "must be an int"),
                            ("aot", {"mass": "heavy"}, "must be one of"), ("vanilla", {"n_iters": 3}, "takes no"),
                            ("aot", {"windows": "3"}, "needs 2 values")]:
        with pytest.raises(ValueError, match=msg):
            method_config(method, None, kw)


def test_loglikelihood_says_what_to_use():
    from aot.eval.lmms_plugin import AOTLlavaOneVision

    with pytest.raises(NotImplementedError, match="generate_until only"):
        AOTLlavaOneVision.loglikelihood(object(), [])
