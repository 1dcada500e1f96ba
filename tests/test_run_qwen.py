"""`aot run` on a tiny random Qwen2.5-VL checkpoint saved here (model, processor with a chat template,
tokenizer; loaded back by path) and real videos.

Independent answers: the unpatched model's greedy answer (retention 1), ``aot.patch`` + ``generate``
called directly on the processor's output (25%), the placeholder count of the processor called
here, the chat template's prompt tokenized here, Eq. 17 by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from aot.cli import main  # noqa: E402

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
VIDEO = VIDEOS / "carphone_pristine.mp4" if (VIDEOS / "carphone_pristine.mp4").is_file() else None
QUESTION = "what moves ?"


@pytest.fixture(scope="module")
def video():
    if VIDEO is None:
        from aot.demo import sample_video

        return sample_video()
    return VIDEO


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    hq.model().save_pretrained(path)
    hq.processor(hq.CHAT_TEMPLATE).save_pretrained(path)
    return path


def direct(checkpoint, video, frames: int, config=None, new_tokens: int = 3):
    """The same question without aot run: the processor called here on the template written out by
    hand, the sampled frame rate given as transformers' VideoMetadata, ``generate`` on the model
    (patched with ``config`` unless None). Returns (answer, inputs)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(checkpoint)
    clip = read_frames(video, frames)
    prompt = f"<s><|vision_start|><|video_pad|><|vision_end|> {QUESTION}</s><s>"  # CHAT_TEMPLATE by hand
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    inputs = proc(text=prompt, videos=[clip.frames], return_tensors="pt", do_sample_frames=False,
                  video_metadata=[meta])
    if config is not None:
        aot.patch(model, config)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), inputs


def one_error_line(err: str, prog: str) -> str:
    """The one error line (stderr also holds transformers' loading bars), or '' if not exactly one."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "error" in ln.lower()]
    return lines[0] if len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") else ""


def run(checkpoint, video, tmp_path, *extra, frames=8, retention=0.25, new_tokens=3):
    out = tmp_path / f"run-{retention}-{len(extra)}.json"
    rc = main(["run", "--model", str(checkpoint), "--video", str(video), "--question", QUESTION,
               "--frames", str(frames), "--retention", str(retention), "--max-new-tokens", str(new_tokens),
               "--json", str(out), "--threads", "1", *extra])
    return rc, (json.loads(out.read_text()) if rc == 0 else None)


def test_run_qwen_answers_and_reports_costs(checkpoint, video, tmp_path, capsys):
    rc, res = run(checkpoint, video, tmp_path)
    text = capsys.readouterr().out
    assert rc == 0, text
    want, inputs = direct(checkpoint, video, 8, aot.AOTConfig(retention=0.25))
    assert res["answer"] == want and res["model_class"] == "Qwen2_5_VLForConditionalGeneration"
    t, h, w = inputs["video_grid_thw"][0].tolist()
    per_slice = h * w // 4  # 2x2 merger
    assert t == 4  # 8 frames = 4 temporal slices of 2
    assert res["video_tokens_in"] == t * per_slice == int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    assert res["video_tokens_out"] == aot.budget(0.25, t, per_slice)
    assert res["llm_video_tokens"] == res["video_tokens_out"]  # no newline token in Qwen's layout
    assert res["prompt_tokens_in"] == inputs["input_ids"].shape[1]  # the chat template, as written by hand
    assert res["prompt_tokens_in"] - res["prompt_tokens_out"] == t * per_slice - res["video_tokens_out"]
    assert res["new_tokens"] == 3 and res["threads"] == 1 and res["frames_sampled"] == 8
    for stage in ("decode", "preprocess", "vision tower", "scores", "compression", "prefill", "decoding"):
        assert stage in text and res["times_s"][stage] >= 0
    assert res["times_s"]["vision tower"] > 0 and res["times_s"]["scores"] > 0 and res["times_s"]["prefill"] > 0
    assert "newline" not in text and "Qwen2_5_VLForConditionalGeneration" in text
    # FLOPs: Eq. 17 by hand for the tiny LLM (hf_tiny_qwen: 2 layers, d 64, m 128) on the visual tokens
    d, m, layers = 64, 128, 2
    eq17 = lambda n: layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) / 1e12  # noqa: E731
    assert res["prefill_tflops_visual"]["vanilla"] == pytest.approx(eq17(t * per_slice))
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(eq17(res["video_tokens_out"]))
    assert res["prefill_tflops_prompt"]["vanilla"] == pytest.approx(eq17(res["prompt_tokens_in"]))


def test_run_qwen_retention_one_is_the_unpatched_model(checkpoint, video, tmp_path, capsys):
    rc, res = run(checkpoint, video, tmp_path, frames=6, retention=1.0, new_tokens=5)
    assert rc == 0, capsys.readouterr().err
    want, inputs = direct(checkpoint, video, 6, None, new_tokens=5)  # unpatched
    assert res["video_tokens_out"] == res["video_tokens_in"] == int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    assert res["answer"] == want and want.strip()  # a non-empty answer, equal to the unpatched model's


def test_run_qwen_other_methods_and_default_layers(checkpoint, video, tmp_path, capsys):
    """visionzip through aot run; the default score layers are the tower's full-attention blocks."""
    import aot.models.qwen2_5_vl as qa

    seen = []
    real = qa.patch

    def spy(model, config, **kw):
        out = real(model, config, **kw)
        seen.append((model._aot.local_layer, model._aot.global_layer, kw))
        return out

    qa.patch = spy
    try:
        rc, res = run(checkpoint, video, tmp_path, "--method", "visionzip")
        assert rc == 0, capsys.readouterr().err
        rc2, _ = run(checkpoint, video, tmp_path, "--method", "visionzip", "--layers", "0,-1")
        assert rc2 == 0, capsys.readouterr().err
    finally:
        qa.patch = real
    assert res["method"] == "visionzip" and res["video_tokens_out"] == aot.budget(0.25, 4, res["video_tokens_in"] // 4)
    assert seen[0][:2] == (1, 3) and "video_layout" not in seen[0][2]  # hf_tiny_qwen: fullatt_block_indexes (1, 3)
    assert seen[1][:2] == (0, 3)


def test_run_qwen_refuses_llava_flags_before_loading_weights(checkpoint, video, capsys, monkeypatch):
    import transformers

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the flags were checked")

    monkeypatch.setattr(transformers.Qwen2_5_VLForConditionalGeneration, "from_pretrained", no_weights)
    base = ["run", "--model", str(checkpoint), "--video", str(video), "--question", "hi"]
    for flag, value in (("--video-layout", "llava-video"), ("--positions", "original")):
        assert main([*base, flag, value]) == 2
        err = capsys.readouterr().err
        assert f"'{value}' is for LLaVA" in one_error_line(err, "aot run"), err


def test_run_qwen_errors_are_one_line(checkpoint, video, tmp_path, capsys):
    base = ["run", "--model", str(checkpoint), "--video", str(video), "--question", "hi", "--frames", "8"]
    cases = [
        ([*base, "--video-layout", "llava-video"], "'llava-video' is for LLaVA-Video checkpoints"),
        ([*base, "--positions", "original"], "'original' is for LLaVA checkpoints"),
        ([*base, "--layers", "9,-2"], "vision layer 9 is out of range"),
        ([*base, "--method", "dycoke", "--retention", "0.1"], "DyCoke"),  # 4 slices: below its floor
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and one_error_line(err, "aot run") and msg in err, (argv, err)


def test_run_qwen_in_llm_method_reports_its_layer_schedule(video, tmp_path, capsys):
    """aot run --method fastv on a 4-layer Qwen2.5-VL: every video token enters the LLM, FastV keeps
    its share after layer 2; FLOPs per layer by hand (Eq. 17 with the kept tokens after layer K)."""
    path = tmp_path / "tiny-qwen4"
    hq.model(text_layers=4).save_pretrained(path)
    hq.processor(hq.CHAT_TEMPLATE).save_pretrained(path)
    rc, res = run(path, video, tmp_path, "--method", "fastv", retention=0.25, new_tokens=2)
    text = capsys.readouterr().out
    assert rc == 0, text
    _, inputs = direct(path, video, 8, None, new_tokens=1)
    n = int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    kept = aot.budget(0.25, 1, n)
    assert res["video_tokens_in"] == n and res["video_tokens_out"] == kept and res["new_tokens"] == 2
    assert res["prompt_tokens_in"] == inputs["input_ids"].shape[1]
    cfg = hq.model(text_layers=4).config.text_config
    d, m = cfg.hidden_size, cfg.intermediate_size
    layer = lambda t: (4 * t * d * d + 2 * t * t * d + 2 * t * d * m) / 1e12  # noqa: E731
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(2 * layer(n) + 2 * layer(kept))


def test_run_qwen_small_budget_fits_and_an_empty_one_is_refused_before_the_tower(checkpoint, video, tmp_path, capsys,
                                                                                monkeypatch):
    """2 frames = 1 temporal slice of N LLM tokens (N from the processor called here): 10% keeps
    round(0.1 N) >= 1 (the old up-front check counted 1 token a frame, round(0.2) = 0, and refused);
    a retention of 0.4 / N keeps round(0.4) = 0: one error line after preprocessing, the tower never runs."""
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qm

    _, inputs = direct(checkpoint, video, 2, None, new_tokens=1)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    n = int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    assert t == 1 and n == h * w // 4
    want = int(0.1 * n + 0.5)  # round half up, by hand
    assert want >= 1
    rc, res = run(checkpoint, video, tmp_path, frames=2, retention=0.1, new_tokens=1)
    assert rc == 0, capsys.readouterr().err
    assert res["video_tokens_in"] == n and res["video_tokens_out"] == want

    def no_tower(*a, **k):
        raise AssertionError("the vision tower ran before the budget check")

    monkeypatch.setattr(qm.Qwen2_5_VisionTransformerPretrainedModel, "forward", no_tower)
    rc, _ = run(checkpoint, video, tmp_path, frames=2, retention=0.4 / n, new_tokens=1)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert f"keeps 0 of {n} tokens" in one_error_line(err, "aot run"), err
