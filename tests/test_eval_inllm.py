"""The in-LLM methods FastV and PDrop through `aot eval`, on tiny 4-layer checkpoints saved here
(LLaVA-OneVision and Qwen2.5-VL) and real videos, batched by 2.

Independent answers: ``aot.patch(model, FastVConfig/PDropConfig)`` + ``generate`` on one question at
a time with the prompt written out by hand (replies); the visual tokens each layer sees from the
layer schedule by hand (round half up of retention x tokens in, per stage), and Eq. 17 summed over
the layers by hand (prefill FLOPs). "visual_tokens" is what the layers after the last stage (and the
decoding steps) see; "visual_tokens_in" the processor's placeholders, which enter the LLM whole.
Qwen2.5-VL videos of different frame sizes have different token counts, which in-LLM pruning cannot
batch: those rows run apart (batch 1), rows of equal count together. `aot run --method fastv` on the
same question reports the same reply, token counts and FLOPs."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torchvision")

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from aot.cli import main  # noqa: E402
from aot.eval.questions import mvbench_prompt  # noqa: E402
from aot.eval.runner import read_cache  # noqa: E402
from aot.methods.inllm import FastVConfig, PDropConfig  # noqa: E402
from test_eval_runner import videos  # noqa: E402

D, M, LAYERS = 64, 128, 4  # hidden size, MLP size and decoder layers of both tiny checkpoints
OPTS = ["a cat", "a dog", "red", "blue"]


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def by_hand(method: str, n: int) -> list[int]:
    """Visual tokens each of the 4 layers sees: FastV retention 0.5, K = 2 (layers 0-1 all, 2-3 half);
    PDrop retention 0.5 at layers 1 and 3 (layer 0 all, 1-2 half, 3 a quarter of the tokens in)."""
    if method == "fastv":
        return [n, n, half_up(0.5 * n), half_up(0.5 * n)]
    return [n, half_up(0.5 * n), half_up(0.5 * n), half_up(0.25 * n)]


def eq17(tokens: list[int]) -> float:
    return sum(4 * t * D * D + 2 * t * t * D + 2 * t * D * M for t in tokens) / 1e12


CONFIGS = {"fastv": FastVConfig(retention=0.5, k=2), "pdrop": PDropConfig(retention=0.5, layers=(1, 3))}


def write(path, vids):
    import json

    rows = [{"id": f"q{i}", "video": str(v), "question": "what moves ?", "options": OPTS, "answer": "ABCD"[i % 4]}
            for i, v in enumerate(vids)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run_eval(ckpt, qs, out, frames):
    return main(["eval", "--questions", str(qs), "--model", str(ckpt), "--methods", "fastv,pdrop",
                 "--retention", "0.5", "--set", "k=2", "--set", "layers=1x3", "--frames", str(frames),
                 "--batch-size", "2", "--max-new-tokens", "3", "--out", str(out), "--threads", "1",
                 "--no-progress", "--no-vanilla"])


def assert_entry(entry, model, method, cfg, proc, inputs, n):
    """One cached aot eval answer == aot.patch + generate on that question alone; its visual tokens,
    prompt tokens and Eq. 17 prefill FLOPs == the layer schedule by hand (n video placeholders)."""
    aot.patch(model, cfg)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    want = proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert entry["raw"] == want, (method, entry["id"])
    tokens = by_hand(method, n)
    assert entry["visual_tokens"] == tokens[-1] and entry["visual_tokens_in"] == n
    assert entry["prefill_tflops"] == pytest.approx(eq17(tokens))
    assert entry["prompt_tokens"] == inputs["input_ids"].shape[1] - n + tokens[-1]

def test_eval_fastv_pdrop_llava_equal_patch_and_generate_one_at_a_time(tmp_path, capsys):
    torch.set_num_threads(1)
    ckpt = tmp_path / "tiny4"
    hf_tiny.model(text_layers=4).save_pretrained(ckpt)
    hf_tiny.processor().save_pretrained(ckpt)
    rows = write(tmp_path / "qa.jsonl", videos()[:3])
    rc = run_eval(ckpt, tmp_path / "qa.jsonl", tmp_path / "out", 8)
    assert rc == 0, capsys.readouterr()
    entries, bad = read_cache(tmp_path / "out" / "answers.jsonl")
    assert bad == 0 and len(entries) == 2 * len(rows)
    got = {(e["id"], e["method"]): e for e in entries.values()}
    from aot.video import read_frames

    proc = hf_tiny.processor()
    n = 8 * 16 + 1  # 8 frames of the 4x4 LLM grid + the video's newline: all placeholders enter the LLM
    for method, cfg in CONFIGS.items():
        for row in rows:
            clip = read_frames(row["video"], 8)
            inputs = proc(text="<video>\n" + mvbench_prompt(row["question"], row["options"]), videos=[clip.frames],
                          return_tensors="pt", do_sample_frames=False)
            assert int((inputs["input_ids"] == hf_tiny.model().config.video_token_id).sum()) == n
            # batched by 2 (left padding) = one question alone
            assert_entry(got[(row["id"], method)], hf_tiny.model(text_layers=4), method, cfg, proc, inputs, n)
    assert [got[("q0", m)]["batch"] for m in CONFIGS] == [2, 2]  # same frames: one batch of 2


def test_eval_fastv_pdrop_qwen_batch_mixing_frame_sizes(tmp_path, capsys):
    """Rows of one batch with different video token counts run apart; equal counts stay batched."""
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    torch.set_num_threads(1)
    ckpt = tmp_path / "tiny4"
    hq.model(text_layers=4).save_pretrained(ckpt)
    hq.processor(hq.CHAT_TEMPLATE).save_pretrained(ckpt)
    vids = videos()  # bikes 2x10x24, carphone 2x14x16, Megamind 2x12x18, bigbuckbunny 2x12x20 (4 frames)
    vids = [vids[0], vids[-1], vids[0], vids[1 % len(vids)]]  # (bikes, bbb): 120 tokens each; (bikes, carphone)
    rows = write(tmp_path / "qa.jsonl", vids)
    rc = run_eval(ckpt, tmp_path / "qa.jsonl", tmp_path / "out", 4)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    entries, bad = read_cache(tmp_path / "out" / "answers.jsonl")
    assert bad == 0 and len(entries) == 8
    got = {(e["id"], e["method"]): e for e in entries.values()}
    proc = hq.processor()
    counts = {}
    for row in rows:
        clip = read_frames(row["video"], 4)
        meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
        text = mvbench_prompt(row["question"], row["options"])
        inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {text}</s><s>", videos=[clip.frames],
                      return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
        t, h, w = inputs["video_grid_thw"][0].tolist()
        n = t * h * w // 4
        assert int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum()) == n
        counts[row["id"]] = n
        for method, cfg in CONFIGS.items():
            assert_entry(got[(row["id"], method)], hq.model(text_layers=4), method, cfg, proc, inputs, n)
    mixed = counts["q2"] != counts["q3"]
    for method in CONFIGS:  # equal counts (different grids allowed) share a generate call
        same = counts["q0"] == counts["q1"]
        assert got[("q0", method)]["batch"] == got[("q1", method)]["batch"] == (2 if same else 1)
        assert got[("q2", method)]["batch"] == got[("q3", method)]["batch"] == (1 if mixed else 2)
    if len(videos()) > 1:  # the real videos: one batch of two grids with equal counts, one of two counts
        assert counts["q0"] == counts["q1"] and mixed


def test_aot_run_and_aot_eval_report_fastv_alike(tmp_path, capsys):
    """The same question through `aot run --method fastv` and `aot eval --methods fastv`: one reply,
    video_tokens_in/out = visual_tokens_in/visual_tokens, the same visual prefill FLOPs."""
    import json

    torch.set_num_threads(1)
    ckpt = tmp_path / "tiny4"
    hf_tiny.model(text_layers=4).save_pretrained(ckpt)
    hf_tiny.processor().save_pretrained(ckpt)
    row, = write(tmp_path / "qa.jsonl", videos()[:1])
    rc = main(["eval", "--questions", str(tmp_path / "qa.jsonl"), "--model", str(ckpt), "--methods", "fastv",
               "--retention", "0.5", "--frames", "8", "--max-new-tokens", "3", "--out", str(tmp_path / "out"),
               "--threads", "1", "--no-progress", "--no-vanilla"])
    assert rc == 0, capsys.readouterr()
    entries, _ = read_cache(tmp_path / "out" / "answers.jsonl")
    (e,) = entries.values()
    rc = main(["run", "--model", str(ckpt), "--video", row["video"], "--question",
               mvbench_prompt(row["question"], row["options"]), "--frames", "8", "--retention", "0.5",
               "--method", "fastv", "--max-new-tokens", "3", "--json", str(tmp_path / "run.json"), "--threads", "1"])
    assert rc == 0, capsys.readouterr()
    res = json.loads((tmp_path / "run.json").read_text())
    n = 8 * 16 + 1
    assert res["answer"] == e["raw"]
    assert (res["video_tokens_in"], res["video_tokens_out"]) == (e["visual_tokens_in"], e["visual_tokens"]) \
        == (n, by_hand("fastv", n)[-1])
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(e["prefill_tflops"])
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(eq17(by_hand("fastv", n)))


def test_eval_pdrop_schedule_that_does_not_fit_is_one_error_line(tmp_path, capsys):
    ckpt = tmp_path / "tiny4"
    hf_tiny.model(text_layers=4).save_pretrained(ckpt)
    hf_tiny.processor().save_pretrained(ckpt)
    write(tmp_path / "qa.jsonl", videos()[:1])
    rc = main(["eval", "--questions", str(tmp_path / "qa.jsonl"), "--model", str(ckpt), "--methods", "pdrop",
               "--retention", "0.5", "--frames", "4", "--max-new-tokens", "1", "--out", str(tmp_path / "out"),
               "--threads", "1", "--no-progress", "--no-vanilla"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("aot eval: error:")] == [
        "aot eval: error: pdrop layers (8, 16, 24) do not fit a language model of 4 layers "
        "(every pruning layer must be < 4)"], err
