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

# The prompt lmms-eval 0.7.3's llava_onevision model (the paper's protocol) sends for a video question,
# written out by hand from its generate_until/loglikelihood (the placeholder, "\n", the context, as
# the user turn of conv_templates["qwen_1_5"]) and the LLaVA-NeXT repo's conv_qwen: ChatML, system
# "<|im_start|>system\nYou are a helpful assistant." + sep "<|im_end|>" + "\n", every message
# role + "\n" + text + "<|im_end|>\n", the open assistant turn role + "\n". LLaVA's placeholder is <image>.
LMMS_EVAL_QWEN_1_5 = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\n{placeholder}\n{context}<|im_end|>\n"
                      "<|im_start|>assistant\n")
# What the llava-hf LLaVA-OneVision checkpoints' chat template renders for the same question (the
# template transformers' conversion script writes): the same ChatML turns, no system turn.
HF_CHAT_TEMPLATE_RENDERING = "<|im_start|>user\n<video>\n{context}<|im_end|>\n<|im_start|>assistant\n"
# a template of ours with that rendering, for the tiny processor (which has none)
HF_LIKE_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                    "{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n{% endif %}{% endfor %}"
                    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
                    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
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


def lmms_setup(tmp: Path, save_checkpoint) -> dict:
    """Under tmp: a tiny checkpoint (``save_checkpoint(tmp / "ckpt")`` writes it), the tiny task, and
    a dist-info carrying pyproject's entry point (what `pip install aot-video` writes), so lmms-eval
    finds the model exactly as it would installed. Returns tmp, ckpt, task, docs and the env to run
    lmms-eval in."""
    ckpt = tmp / "ckpt"
    save_checkpoint(ckpt)
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """lmms_setup with the tiny LLaVA-OneVision checkpoint."""
    def save(ckpt):
        hf_tiny.model().save_pretrained(ckpt)
        hf_tiny.processor().save_pretrained(ckpt)

    return lmms_setup(tmp_path_factory.mktemp("lmms"), save)


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
    prompt = LMMS_EVAL_QWEN_1_5.format(placeholder="<video>", context=text)  # the plugin's default prompt
    inputs = proc(text=prompt, videos=[frames], return_tensors="pt", do_sample_frames=False)
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
        # the LLM got budget + the video's newline: counted apart (aot.efficiency)
        assert info["method"] == "aot" and info["visual_tokens"] == budget and info["newline_tokens"] == 1
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


def run_with_legacy_plugins_variable(s, code: str) -> str:
    """stdout of ``python -c code`` found by LMMS_EVAL_PLUGINS=aot alone (no entry point on the path);
    the run must succeed."""
    env = dict(s["env"])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # no entry point
    env["LMMS_EVAL_PLUGINS"] = "aot"
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_legacy_plugins_variable_and_registry(setup):
    code = ("from lmms_eval.models import get_model, get_model_manifest;"
            "c = get_model('aot_llava_onevision'); print(c.__module__, c.__name__, c.is_simple)")
    assert "AOTLlavaOneVision True" in run_with_legacy_plugins_variable(setup, code)


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


# ---- prompts and loglikelihood, in process -------------------------------------------------

def plugin(setup, ckpt=None, **args):
    from aot.eval.lmms_plugin import AOTLlavaOneVision

    kw = dict(method="aot", retention=0.25, frames=8, local_layer=1, n_iters=20, windows="2x2")
    if args.get("method") == "vanilla":
        kw = dict(frames=8)
    kw.update(args)
    m = AOTLlavaOneVision(pretrained=str(ckpt or setup["ckpt"]), **kw)
    m.task_dict = {"tiny": {"test": setup["docs"]}}
    return m


def ll_request(context, target, doc_id=0):
    from lmms_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", idx=0, metadata={"task": "tiny", "doc_id": doc_id, "repeats": 1},
                    arguments=(context, target, lambda doc: [doc["video"]], doc_id, "tiny", "test"))


def reference_nll(model, inputs, n):
    """-mean log p of the last n tokens under ``model`` (unpatched), by hand from its logits."""
    with torch.inference_mode():
        logits = model(**inputs).logits[0].double()
    ids = inputs["input_ids"][0]
    logp = torch.log_softmax(logits[:-1], dim=-1)[torch.arange(len(ids) - 1), ids[1:]]
    greedy = bool((logits[:-1].argmax(-1)[-n:] == ids[-n:]).all())
    return float(-logp[-n:].mean()), greedy


def test_default_prompt_is_lmms_eval_qwen_1_5_and_chat_template_differs_by_the_system_turn(setup, tmp_path):
    from aot.eval.lmms_plugin import qwen_1_5_prompt

    context = "what moves ?\nA. a cat\nB. a dog\nAnswer with the option's letter from the given choices directly."
    assert qwen_1_5_prompt(context, placeholder="<image>") == LMMS_EVAL_QWEN_1_5.format(placeholder="<image>",
                                                                                        context=context)
    assert plugin(setup)._prompt(context) == LMMS_EVAL_QWEN_1_5.format(placeholder="<video>", context=context)
    # a checkpoint whose processor carries an HF-style chat template: conv_template=chat_template uses it
    ckpt = tmp_path / "ckpt_tpl"
    hf_tiny.model().save_pretrained(ckpt)
    proc = hf_tiny.processor()
    proc.chat_template = HF_LIKE_TEMPLATE
    proc.save_pretrained(ckpt)
    hf = plugin(setup, ckpt, conv_template="chat_template")._prompt(context)
    assert hf == HF_CHAT_TEMPLATE_RENDERING.format(context=context)
    assert plugin(setup, ckpt)._prompt(context) == \
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + hf  # the only difference
    with pytest.raises(ValueError, match="conv_template must be one of"):
        plugin(setup, conv_template="llava")


@pytest.mark.parametrize("method", ["vanilla", "aot"])
def test_loglikelihood_at_full_retention_is_the_models_own(setup, method):
    from aot.video import read_frames

    doc = setup["docs"][0]
    m = plugin(setup, method=method, retention=1.0) if method == "aot" else plugin(setup, method=method)
    context = "what moves ?"
    # a multiple_choice request carries the option (after the target delimiter); a loglikelihood one doc_to_target
    got = m.loglikelihood([ll_request(context, " a cat"), ll_request(context, lambda d: d["answer"]),
                           ll_request(context, " blue")])
    model, proc = hf_tiny.model(), hf_tiny.processor()
    frames = read_frames(doc["video"], 8).frames
    prompt = LMMS_EVAL_QWEN_1_5.format(placeholder="<video>", context=context)
    n_prompt = proc(text=prompt, videos=[frames], return_tensors="pt", do_sample_frames=False)["input_ids"].shape[1]
    for (value, greedy), answer in zip(got, [" a cat", doc["answer"], " blue"]):
        full = proc(text=prompt + answer + "<|im_end|>\n", videos=[frames], return_tensors="pt", do_sample_frames=False)
        ref, ref_greedy = reference_nll(model, full, full["input_ids"].shape[1] - n_prompt)
        assert value == pytest.approx(ref, rel=1e-5, abs=1e-6) and greedy == ref_greedy
    assert got[0][0] != got[2][0]


def test_loglikelihood_at_25_percent_scores_the_compressed_inputs(setup):
    doc = setup["docs"][1]
    m = plugin(setup)  # aot, 25%
    lm = m.model.model.language_model
    seen = []
    hook = lm.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    try:
        (value, greedy), = m.loglikelihood([ll_request("what moves ?", " a dog", doc_id=1)])
    finally:
        hook.remove()
    assert len(seen) == 1
    emb = seen[0]["inputs_embeds"]
    # the LLM got the compressed video: 8 x 16 tokens + newline -> budget + newline
    from aot.video import read_frames

    proc = hf_tiny.processor()
    frames = read_frames(doc["video"], 8).frames
    prompt = LMMS_EVAL_QWEN_1_5.format(placeholder="<video>", context="what moves ?")
    n_prompt = proc(text=prompt, videos=[frames], return_tensors="pt", do_sample_frames=False)["input_ids"].shape[1]
    full = proc(text=prompt + " a dog<|im_end|>\n", videos=[frames], return_tensors="pt", do_sample_frames=False)
    ids = full["input_ids"][0]
    n = len(ids) - n_prompt
    assert emb.shape[1] == len(ids) - (8 * 16 + 1) + aot.budget(0.25, 8, 16) + 1
    # by hand: the unpatched language model and head on exactly those inputs, log-softmax, the last n tokens
    with torch.inference_mode():
        hidden = lm(inputs_embeds=emb, attention_mask=seen[0].get("attention_mask"),
                    position_ids=seen[0].get("position_ids")).last_hidden_state
        logits = m.model.lm_head(hidden)[0].double()
    logp = torch.log_softmax(logits[-n - 1:-1], dim=-1).gather(1, ids[-n:].unsqueeze(1))
    assert value == pytest.approx(float(-logp.mean()), rel=1e-5, abs=1e-6)
    assert greedy == bool((logits[-n - 1:-1].argmax(-1) == ids[-n:]).all())
    # and it is not the uncompressed score
    (full_value, _), = plugin(setup, method="vanilla").loglikelihood([ll_request("what moves ?", " a dog", doc_id=1)])
    assert abs(value - full_value) > 1e-4


MC_YAML = """task: tiny_egoschema_mcppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "question"
doc_to_target: !function utils.egoschema_doc_to_answer
doc_to_choice: !function utils.egoschema_doc_to_choice
process_results: !function utils.egoschema_process_results
metric_list:
  - metric: score
    aggregation: !function utils.egoschema_aggregate_score
    higher_is_better: true
"""
MC_UTILS = """from lmms_eval.tasks.egoschema.utils import (  # noqa: F401  lmms-eval's own EgoSchema mc-ppl functions
    egoschema_aggregate_score, egoschema_doc_to_answer, egoschema_doc_to_choice, egoschema_process_results)


def doc_to_visual(doc):
    return [doc["video"]]
"""


def test_multiple_choice_perplexity_task_through_lmms_eval(setup):
    """egoschema_subset_mcppl's request and scoring path (lmms-eval's EgoSchema functions, lowest value
    wins) on a tiny task: every option's value equals the plugin's own loglikelihood in process."""
    task = setup["tmp"] / "task_mc"
    task.mkdir()
    vids = videos()
    docs = [{"video": str(vids[i % len(vids)]), "video_idx": f"v{i}", "question": "what moves ?",
             "option": [f"{k}. {o}" for k, o in zip("ABCD", OPTS)], "answer": i % 4} for i in range(2)]
    (task / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (task / "tiny_egoschema_mcppl.yaml").write_text(MC_YAML.format(data=task / "mc.jsonl"))
    (task / "utils.py").write_text(MC_UTILS)
    out = setup["tmp"] / "out_mc"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "aot_llava_onevision", "--model_args",
           f"pretrained={setup['ckpt']},{MODEL_ARGS}", "--tasks", "tiny_egoschema_mcppl", "--include_path",
           str(task), "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    res = subprocess.run(cmd, env=setup["env"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    files = sorted(out.rglob("*_samples_tiny_egoschema_mcppl.jsonl"))
    assert files, res.stdout[-3000:] + res.stderr[-3000:]
    got = sorted((json.loads(line) for line in files[-1].read_text().splitlines()), key=lambda d: d["doc_id"])
    assert [d["doc_id"] for d in got] == [0, 1]
    m = plugin({**setup, "docs": docs})
    for d in got:
        # one (value, greedy) per option, in option order, target delimiter " " before each option
        mine = m.loglikelihood([ll_request("what moves ?", f" {o}", doc_id=d["doc_id"]) for o in OPTS])
        assert [float(v) for v, _ in d["filtered_resps"]] == pytest.approx([v for v, _ in mine], rel=1e-5)
        assert [g == "True" for _, g in d["filtered_resps"]] == [g for _, g in mine]
        assert d["score"]["pred"] == min(range(4), key=lambda i: mine[i][0])  # EgoSchema's rule: lowest wins
        budget = aot.budget(0.25, 8, 16)
        assert all((tc["aot"]["visual_tokens"], tc["aot"]["newline_tokens"]) == (budget, 1) for tc in d["token_counts"])
