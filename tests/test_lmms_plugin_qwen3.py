"""The lmms-eval model ``aot_qwen3_vl`` through lmms-eval's own entry point (``python -m lmms_eval``)
on a tiny random Qwen3-VL-MoE checkpoint saved here (processor with a chat template) and the tiny
MVBench-style task of tests/test_lmms_plugin.py, real videos of different sizes batched by 2.

Independent answers: ``aot.patch`` + ``generate`` on one video at a time with the prompt written out
by hand and the sampled frames' metadata (the same timestamps), the processor's grid and
``aot.budget`` (visual tokens per sample)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("lmms_eval")

import torch  # noqa: E402

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny_qwen3 as hq  # noqa: E402
from test_lmms_plugin import lmms_setup, samples  # noqa: E402

POST = "Only give the best option.\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    def save(ckpt):
        hq.model("qwen3_vl_moe").save_pretrained(ckpt)
        hq.processor(hq.CHAT_TEMPLATE).save_pretrained(ckpt)

    return lmms_setup(tmp_path_factory.mktemp("lmms-qwen3"), save)


def one_video(doc, method, config):
    from lmms_eval.tasks.mvbench.utils import mvbench_doc_to_text
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    proc = hq.processor()
    text = mvbench_doc_to_text(doc, {"post_prompt": POST})
    clip = read_frames(doc["video"], 8)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {text}</s><s>", videos=[clip.frames],
                  return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
    model = hq.model("qwen3_vl_moe")
    aot.patch(model, config, method=method)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip(), inputs


def test_qwen3_vl_plugin_through_lmms_eval_entry_point(setup):
    out = setup["tmp"] / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "aot_qwen3_vl",
           "--model_args", f"pretrained={setup['ckpt']},method=holitom,retention=0.25,frames=8",
           "--tasks", "tiny_mvbench", "--include_path", str(setup["task"]), "--batch_size", "2",
           "--output_path", str(out), "--log_samples"]
    res = subprocess.run(cmd, env=setup["env"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    got = samples(out)
    assert [d["doc_id"] for d in got] == [0, 1, 2, 3]
    cfg = aot.methods.get("holitom").config(retention=0.25)
    sizes = set()
    for d in got:
        want, inputs = one_video(setup["docs"][d["doc_id"]], "holitom", cfg)
        t, h, w = inputs["video_grid_thw"][0].tolist()
        sizes.add((h, w))
        info = d["token_counts"][0]["aot"]
        assert info["visual_tokens"] == aot.budget(0.25, t, h * w // 4) and info["method"] == "holitom"
        assert "video_layout" not in info
        assert d["filtered_resps"] == want, d["doc_id"]  # batched with another size = one video alone
    assert len(sizes) > 1
    log = res.stdout + res.stderr
    assert "aot_qwen3_vl" in log and "Qwen3VLMoeForConditionalGeneration" in log
    assert "tiny_mvbench" in json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())["results"]
