"""`aot eval` on a tiny random Qwen2.5-VL checkpoint saved here (the loader of `aot run`) and real
videos of different sizes, batched by 2.

Independent answers: ``aot.patch`` + ``generate`` on one question at a time with the chat template's
prompt written out by hand (replies), the processor's grid with ``aot.budget`` and its placeholder
count (visual tokens), Eq. 17 by hand (FLOPs)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchvision")

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from aot.cli import main  # noqa: E402
from aot.eval.questions import mvbench_prompt  # noqa: E402
from aot.eval.runner import read_cache  # noqa: E402
from test_eval_runner import write_questions  # noqa: E402


def one_question(row, config):
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    proc = hq.processor()
    clip = read_frames(row["video"], 8)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    text = mvbench_prompt(row["question"], row["options"])
    inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {text}</s><s>", videos=[clip.frames],
                  return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
    model = hq.model()
    if config is not None:
        aot.patch(model, config)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), inputs


def test_eval_runs_a_qwen_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    hq.model().save_pretrained(ckpt)
    hq.processor(hq.CHAT_TEMPLATE).save_pretrained(ckpt)
    qs = tmp_path / "qa.jsonl"
    rows = write_questions(qs, 4)
    rc = main(["eval", "--questions", str(qs), "--model", str(ckpt), "--methods", "aot", "--retention", "0.25",
               "--frames", "8", "--batch-size", "2", "--max-new-tokens", "3", "--set", "n_iters=20",
               "--out", str(tmp_path / "out"), "--threads", "1", "--no-progress"])
    assert rc == 0
    entries, bad = read_cache(tmp_path / "out" / "answers.jsonl")
    assert bad == 0 and len(entries) == 8
    got = {(e["id"], e["method"]): e for e in entries.values()}
    cfg = aot.AOTConfig(retention=0.25, n_iters=20)
    d, m, layers = 64, 128, 2
    eq17 = lambda n: layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) / 1e12  # noqa: E731
    sizes = set()
    for row in rows:
        want, inputs = one_question(row, cfg)
        t, h, w = inputs["video_grid_thw"][0].tolist()
        sizes.add((h, w))
        e = got[(row["id"], "aot")]
        assert e["raw"] == want, row["id"]  # batched (left padding, mixed sizes) = one question alone
        assert e["visual_tokens"] == aot.budget(0.25, t, h * w // 4)
        assert e["prefill_tflops"] == pytest.approx(eq17(e["visual_tokens"]))
        assert e["prompt_tokens"] == inputs["input_ids"].shape[1] - t * h * w // 4 + e["visual_tokens"]
        van = got[(row["id"], "vanilla")]
        assert van["visual_tokens"] == int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    assert len(sizes) > 1
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["method"], r["n"]) for r in table} == {("vanilla", 4), ("aot", 4)}


def test_eval_refuses_llava_flags_for_qwen(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    hq.model().save_pretrained(ckpt)
    hq.processor().save_pretrained(ckpt)  # no chat template: the bare video block is used
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, 1)
    rc = main(["eval", "--questions", str(qs), "--model", str(ckpt), "--methods", "aot", "--retention", "0.25",
               "--frames", "4", "--no-vanilla", "--positions", "original", "--out", str(tmp_path / "out"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "aot eval: error: positions 'original' is for LLaVA checkpoints" in err, err
