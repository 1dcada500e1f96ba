"""`aot run`, `aot eval` and the lmms-eval models on tiny random Qwen3-VL (dense, MoE) and Qwen3.5
checkpoints saved here (model, processor with a chat template) and real videos.

Independent answers: ``aot.patch`` + ``generate`` called directly on the processor's output with the
chat template written out by hand and the sampled frames' metadata (so the same timestamps), the
processor's placeholder count and grid with ``aot.budget``, Eq. 17 by hand for the tiny LLMs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny_qwen3 as hq  # noqa: E402
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


def save(path, family, **kw):
    hq.model(family, **kw).save_pretrained(path)
    hq.processor(hq.CHAT_TEMPLATE).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {f: save(tmp_path_factory.mktemp(f), f) for f in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5")}


def direct(checkpoint, family, video, frames, config=None, method=None, new_tokens=3):
    import transformers
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    model = getattr(transformers, hq.MODEL_CLASSES[family]).from_pretrained(checkpoint, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(checkpoint)
    clip = read_frames(video, frames)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {QUESTION}</s><s>", videos=[clip.frames],
                  return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
    if config is not None:
        aot.patch(model, config, method=method)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), inputs


def run(checkpoint, video, tmp_path, *extra, frames=8, retention=0.25, new_tokens=3):
    out = tmp_path / f"run-{retention}-{len(extra)}.json"
    rc = main(["run", "--model", str(checkpoint), "--video", str(video), "--question", QUESTION,
               "--frames", str(frames), "--retention", str(retention), "--max-new-tokens", str(new_tokens),
               "--json", str(out), "--threads", "1", *extra])
    return rc, (json.loads(out.read_text()) if rc == 0 else None)


@pytest.mark.parametrize("family,method", [("qwen3_vl", "visionzip"), ("qwen3_vl_moe", "holitom"),
                                           ("qwen3_5", "aot")])
def test_run_answers_with_the_checkpoints_class_processor_and_timestamps(checkpoints, video, tmp_path, capsys,
                                                                         family, method):
    rc, res = run(checkpoints[family], video, tmp_path, "--method", method)
    text = capsys.readouterr().out
    assert rc == 0, text
    m = aot.methods.get(method)
    want, inputs = direct(checkpoints[family], family, video, 8, m.config(retention=0.25), method)
    assert res["answer"] == want and res["model_class"] == hq.MODEL_CLASSES[family]
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(hq.ids("<|vision_start|>")) == ids.count(hq.ids("<|vision_end|>")) == 4  # a block a slice
    if family != "qwen3_5":  # transformers 5.25 loads a qwen3_5 checkpoint's tokenizer as its own BPE class,
        # which does not keep the tiny word-level vocabulary's "seconds"
        words = hq.tokenizer().convert_ids_to_tokens(ids)
        assert "".join(words).count("seconds>") == 4  # one timestamp a temporal slice, from the clip's fps
    t, h, w = inputs["video_grid_thw"][0].tolist()
    per_slice = h * w // 4
    assert t == 4 and res["video_tokens_in"] == t * per_slice
    assert res["video_tokens_out"] == res["llm_video_tokens"] == aot.budget(0.25, t, per_slice)
    assert res["prompt_tokens_in"] == inputs["input_ids"].shape[1]
    cfg = hq.config(family).text_config
    d = cfg.hidden_size
    eq = lambda n, m_: (4 * n * d * d + 2 * n * n * d + 2 * n * d * m_) / 1e12  # noqa: E731
    if family == "qwen3_5":  # 3 linear-attention layers and one full one (tests/hf_tiny_qwen3.py)
        state = 6 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim
        m_ = cfg.intermediate_size
        n = res["video_tokens_out"]
        want_flops = eq(n, m_) + 3 * (4 * n * d * d + 2 * n * d * m_ + n * state) / 1e12
    else:
        m_ = cfg.num_experts_per_tok * cfg.moe_intermediate_size if family == "qwen3_vl_moe" else cfg.intermediate_size
        want_flops = cfg.num_hidden_layers * eq(res["video_tokens_out"], m_)
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(want_flops)


def test_run_qwen3_vl_fastv_prunes_inside_with_deepstack(video, tmp_path, capsys):
    path = save(tmp_path / "q3-4", "qwen3_vl", text_layers=4, deepstack=(0, 1, 2))
    rc, res = run(path, video, tmp_path, "--method", "fastv", new_tokens=2)
    assert rc == 0, capsys.readouterr().err
    want, inputs = direct(path, "qwen3_vl", video, 8, aot.methods.get("fastv").config(retention=0.25), "fastv", 2)
    n = int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    assert res["answer"] == want and res["video_tokens_in"] == n and res["video_tokens_out"] == aot.budget(0.25, 1, n)


def test_run_refuses_before_loading_weights(checkpoints, video, capsys, monkeypatch):
    import transformers

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the flags were checked")

    for cls in ("Qwen3_5ForConditionalGeneration", "Qwen3VLForConditionalGeneration"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", no_weights)
    cases = [(checkpoints["qwen3_5"], ["--method", "fastv"], "fastv prunes inside the language model, which "
                                                             "Qwen3.5 does not allow: its text model is hybrid"),
             (checkpoints["qwen3_5"], ["--method", "pdrop"], "Gated DeltaNet"),
             (checkpoints["qwen3_vl"], ["--video-layout", "llava-video"], "a Qwen3-VL model keeps its own layout"),
             (checkpoints["qwen3_vl"], ["--positions", "original"], "'original' is for LLaVA checkpoints")]
    for ckpt, extra, msg in cases:
        assert main(["run", "--model", str(ckpt), "--video", str(video), "--question", "hi", *extra]) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("aot run: error:")]
        assert len(lines) == 1 and msg in lines[0] and "Traceback" not in err, err


def test_eval_runs_a_qwen3_vl_checkpoint_batched(checkpoints, tmp_path):
    from aot.eval.questions import mvbench_prompt
    from aot.eval.runner import read_cache
    from test_eval_runner import write_questions

    qs = tmp_path / "qa.jsonl"
    rows = write_questions(qs, 2)
    rc = main(["eval", "--questions", str(qs), "--model", str(checkpoints["qwen3_vl"]), "--methods", "visionzip",
               "--retention", "0.25", "--frames", "8", "--batch-size", "2", "--max-new-tokens", "3",
               "--out", str(tmp_path / "out"), "--threads", "1", "--no-progress"])
    assert rc == 0
    entries, bad = read_cache(tmp_path / "out" / "answers.jsonl")
    got = {(e["id"], e["method"]): e for e in entries.values()}
    from transformers.video_utils import VideoMetadata

    from aot.video import read_frames

    proc = hq.processor()
    for row in rows:
        clip = read_frames(row["video"], 8)
        meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
        text = mvbench_prompt(row["question"], row["options"])
        inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {text}</s><s>", videos=[clip.frames],
                      return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
        model = hq.model("qwen3_vl")
        aot.patch(model, aot.methods.get("visionzip").config(retention=0.25))
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        want = proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        e = got[(row["id"], "visionzip")]
        t, h, w = inputs["video_grid_thw"][0].tolist()
        assert e["raw"] == want and e["visual_tokens"] == aot.budget(0.25, t, h * w // 4)
    assert bad == 0


# --- lmms-eval ------------------------------------------------------------------------------------------

def test_lmms_models_load_refuse_and_answer(checkpoints, video):
    pytest.importorskip("lmms_eval")
    from aot.eval.lmms_plugin import AOTQwen2_5_VL, AOTQwen3_5, AOTQwen3VL

    with pytest.raises(ValueError, match="is a Qwen3-VL checkpoint, which aot_qwen3_5 does not run; use --model "
                                         "aot_qwen3_vl"):
        AOTQwen3_5(pretrained=str(checkpoints["qwen3_vl"]))
    with pytest.raises(ValueError, match="is a Qwen3.5 checkpoint, which aot_qwen2_5_vl does not run"):
        AOTQwen2_5_VL(pretrained=str(checkpoints["qwen3_5"]))
    with pytest.raises(ValueError, match="aot_qwen3_5: method fastv prunes inside the language model.*hybrid"):
        AOTQwen3_5(pretrained=str(checkpoints["qwen3_5"]), method="fastv")
    with pytest.raises(ValueError, match="a Qwen3-VL model keeps its own layout"):
        AOTQwen3VL(pretrained=str(checkpoints["qwen3_vl"]), video_layout="llava-video")
    lm = AOTQwen3VL(pretrained=str(checkpoints["qwen3_vl_moe"]), method="visionzip", retention=0.25, frames=8)
    assert type(lm.model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    from aot.video import read_frames

    clip = read_frames(video, 8)
    inputs = lm._inputs(clip, QUESTION)
    want, direct_inputs = direct(checkpoints["qwen3_vl_moe"], "qwen3_vl_moe", video, 8,
                                 aot.methods.get("visionzip").config(retention=0.25), "visionzip")
    assert torch.equal(inputs["input_ids"], direct_inputs["input_ids"])  # the chat template, timestamps
    from aot.eval.engine import generate_batch

    res = generate_batch(lm.model, inputs, lm._decode, method=lm._method, config=lm._config,
                         gen_kwargs={"max_new_tokens": 3})
    assert res.texts[0] == want
