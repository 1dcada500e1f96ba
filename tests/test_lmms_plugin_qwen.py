"""The lmms-eval model ``aot_qwen2_5_vl`` through lmms-eval's own entry point (``python -m lmms_eval``)
on a tiny random Qwen2.5-VL checkpoint saved here (processor with a chat template) and the tiny
MVBench-style task of tests/test_lmms_plugin.py, with real videos of different sizes in one batch.

Independent answers: ``aot.patch`` + ``generate`` on one video at a time with the prompt written out
by hand (answers), the processor's grid and ``aot.budget`` (visual tokens per sample), the
processor's placeholder count (``method=vanilla``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("lmms_eval")  # the `lmms` extra

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from test_lmms_plugin import lmms_setup, run_with_legacy_plugins_variable, samples  # noqa: E402

MODEL_ARGS = "method=aot,retention=0.25,frames=8,n_iters=20,windows=2x2"
POST = "Only give the best option.\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """test_lmms_plugin.lmms_setup with the tiny Qwen2.5-VL checkpoint (processor with a chat template)."""
    def save(ckpt):
        hq.model().save_pretrained(ckpt)
        hq.processor(hq.CHAT_TEMPLATE).save_pretrained(ckpt)

    return lmms_setup(tmp_path_factory.mktemp("lmms-qwen"), save)


def lmms_eval(s, name: str, model_args: str):
    out = s["tmp"] / name
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "aot_qwen2_5_vl",
           "--model_args", f"pretrained={s['ckpt']},{model_args}", "--tasks", "tiny_mvbench",
           "--include_path", str(s["task"]), "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    res = subprocess.run(cmd, env=s["env"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return samples(out), res.stdout + res.stderr, out


def one_video(doc, config):
    """(answer, processor inputs) for one doc without lmms-eval: the template's prompt written by hand."""
    from lmms_eval.tasks.mvbench.utils import mvbench_doc_to_text
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    proc = hq.processor()
    text = mvbench_doc_to_text(doc, {"post_prompt": POST})
    clip = read_frames(doc["video"], 8)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {text}</s><s>", videos=[clip.frames],
                  return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
    if config is None:
        return None, inputs
    model = hq.model()
    aot.patch(model, config)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip(), inputs


def test_qwen_plugin_through_lmms_eval_entry_point(setup):
    got, log, out = lmms_eval(setup, "out_aot", MODEL_ARGS)
    assert [d["doc_id"] for d in got] == [0, 1, 2, 3]
    cfg = aot.AOTConfig(retention=0.25, n_iters=20, windows=(2, 2))
    sizes = set()
    visual = []
    for d in got:
        doc = setup["docs"][d["doc_id"]]
        want, inputs = one_video(doc, cfg)
        t, h, w = inputs["video_grid_thw"][0].tolist()
        sizes.add((h, w))
        info = d["token_counts"][0]["aot"]
        assert info["visual_tokens"] == aot.budget(0.25, t, h * w // 4), (d["doc_id"], t, h, w)
        assert info["method"] == "aot" and info["frames"] == 8
        assert info["config"] == {**cfg.to_dict(), "windows": [2, 2]} and "video_layout" not in info
        assert "mvbench_accuracy" in d
        assert d["filtered_resps"] == want, d["doc_id"]  # a batch of 2 (different sizes) = one video alone
        visual.append(info["visual_tokens"])
    assert len(sizes) > 1  # the batches mixed frame sizes
    assert f"mean visual tokens {sum(visual) / len(visual):.1f}" in log and '"n_iters": 20' in log
    assert "aot_qwen2_5_vl" in log and "Qwen2_5_VLForConditionalGeneration" in log
    results = json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())
    assert "tiny_mvbench" in results["results"] and "n_iters=20" in results["config"]["model_args"]


def test_qwen_plugin_vanilla_counts_the_processor_placeholders(setup):
    got, _, _ = lmms_eval(setup, "out_vanilla", "method=vanilla,frames=8")
    for d in got:
        _, inputs = one_video(setup["docs"][d["doc_id"]], None)
        assert d["token_counts"][0]["aot"]["visual_tokens"] == int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
        assert d["token_counts"][0]["aot"]["config"] == {}


def test_qwen_plugin_legacy_plugins_variable(setup):
    code = ("from lmms_eval.models import get_model;"
            "c = get_model('aot_qwen2_5_vl'); print(c.__module__, c.__name__, c.is_simple)")
    assert "AOTQwen2_5_VL True" in run_with_legacy_plugins_variable(setup, code)


def test_qwen_plugin_refuses_the_other_family_and_llava_options(setup, tmp_path):
    from aot.eval.lmms_plugin import AOTLlavaOneVision, AOTQwen2_5_VL

    llava = tmp_path / "llava"
    hf_tiny.model().save_pretrained(llava)
    hf_tiny.processor().save_pretrained(llava)
    with pytest.raises(ValueError, match="use --model aot_llava_onevision"):
        AOTQwen2_5_VL(pretrained=str(llava))
    with pytest.raises(ValueError, match="use --model aot_qwen2_5_vl"):
        AOTLlavaOneVision(pretrained=str(setup["ckpt"]))
    with pytest.raises(ValueError, match="'llava-video' is for LLaVA-Video"):
        AOTQwen2_5_VL(pretrained=str(setup["ckpt"]), video_layout="llava-video")
    with pytest.raises(ValueError, match="vision layer 7 is out of range"):
        AOTQwen2_5_VL(pretrained=str(setup["ckpt"]), local_layer=7, global_layer=-1)
    m = AOTQwen2_5_VL(pretrained=str(setup["ckpt"]), method="visionzip", retention="0.5", batch_size="3")
    assert m.batch_size == 3 and m.layers is None and m._config.retention == 0.5


def test_qwen_plugin_takes_the_chat_template_only(setup):
    from aot.eval.lmms_plugin import AOTQwen2_5_VL

    with pytest.raises(ValueError, match="conv_template must be one of chat_template, got 'qwen_1_5'"):
        AOTQwen2_5_VL(pretrained=str(setup["ckpt"]), conv_template="qwen_1_5")
    m = AOTQwen2_5_VL(pretrained=str(setup["ckpt"]), method="vanilla", frames=8)
    assert m.conv_template == "chat_template"
    assert m._prompt("what moves ?") == "<s><|vision_start|><|video_pad|><|vision_end|> what moves ?</s><s>"


@pytest.mark.parametrize("method,retention", [("vanilla", None), ("aot", 1.0), ("aot", 0.25)])
def test_qwen_plugin_loglikelihood_is_the_unpatched_models_own(setup, method, retention):
    """Mean -log p of the option after the prompt. Reference: the unpatched model's log-softmax by hand
    on the processor's inputs (retention 1, vanilla); at 25% the unpatched model on the inputs
    ``aot.patch`` hands the inner model, i.e. the compressed prompt and video tokens (captured by a
    pre-hook on ``model.model``)."""
    from lmms_eval.api.instance import Instance
    from transformers import Qwen2_5_VLForConditionalGeneration

    from aot.eval.lmms_plugin import AOTQwen2_5_VL
    from aot.video import read_frames

    args = dict(method=method, frames=8) if method == "vanilla" else \
        dict(method=method, retention=retention, frames=8, n_iters=20, windows="2x2")
    m = AOTQwen2_5_VL(pretrained=str(setup["ckpt"]), **args)
    m.task_dict = {"tiny": {"test": setup["docs"]}}
    req = Instance(request_type="loglikelihood", idx=0, metadata={"task": "tiny", "doc_id": 0, "repeats": 1},
                   arguments=("what moves ?", " a cat", lambda doc: [doc["video"]], 0, "tiny", "test"))
    seen = []
    hook = m.model.model.register_forward_pre_hook(lambda mod, a, kw: seen.append(dict(kw)), with_kwargs=True)
    try:
        (value, greedy), = m.loglikelihood([req])
    finally:
        hook.remove()
    from transformers.video_utils import VideoMetadata

    clip = read_frames(setup["docs"][0]["video"], 8)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    proc = __import__("transformers").AutoProcessor.from_pretrained(setup["ckpt"])
    prompt = "<s><|vision_start|><|video_pad|><|vision_end|> what moves ?</s><s>"  # CHAT_TEMPLATE by hand
    kw = dict(videos=[clip.frames], return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
    n = proc(text=prompt + " a cat", **kw)["input_ids"].shape[1] - proc(text=prompt, **kw)["input_ids"].shape[1]
    assert n >= 1
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(setup["ckpt"], dtype=torch.float32).eval()
    if retention == 0.25:  # the compressed call the patched model ran, replayed unpatched
        (inputs,) = seen
        inputs = {k: v for k, v in inputs.items() if v is not None}
        assert (inputs["input_ids"] == hq.ids("<|video_pad|>")).sum() < (proc(text=prompt, **kw)["input_ids"]
                                                                          == hq.ids("<|video_pad|>")).sum()
    else:
        inputs = dict(proc(text=prompt + " a cat", **kw))
    with torch.inference_mode():
        logits = model(**inputs).logits[0].double()
    ids = inputs["input_ids"][0]
    logp = torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids) - 1), ids[1:]]
    assert value == pytest.approx(float(-logp[-n:].mean()), rel=1e-5, abs=1e-6)
    assert greedy == bool((logits[:-1].argmax(-1)[-n:] == ids[-n:]).all())
