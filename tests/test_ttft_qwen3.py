"""benchmarks/ttft.py's Qwen3-VL row (tiny and random here): visual tokens against the processor's
placeholder count and aot.budget, every stage timed; the Qwen3-VL-shaped prompt's layout (a
timestamp and start/end markers around every slice's pads) and the scaled DeepStack taps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

import aot  # noqa: E402
import hf_tiny_qwen3 as hq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ttft  # noqa: E402


def test_qwen3_row_counts_and_times():
    model = hq.model("qwen3_vl")
    inputs = hq.processor()(text="<|vision_start|><|video_pad|><|vision_end|> what moves ?",
                            videos=[hq.frames(8, height=48)], return_tensors="pt")
    placeholders = int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    t, h, w = inputs["video_grid_thw"][0].tolist()
    times, n = ttft.one_row(model, inputs, "cpu")
    assert n == placeholders == t * h * w // 4 and times["vision tower"] > 0 and times["prefill"] > 0
    times, n = ttft.one_row(model, inputs, "cpu", "aot", 0.25)
    assert n == aot.budget(0.25, t, h * w // 4) and times["scores"] > 0 and times["compression"] > 0
    assert getattr(model, "_aot", None) is None


def test_qwen3_shaped_prompt_layout_and_taps():
    from aot.demo import sample_video
    from aot.video import read_frames

    assert ttft.scaled_taps(24) == [5, 11, 17] and ttft.scaled_taps(8) == [2, 4, 6]
    with pytest.raises(SystemExit):
        ttft.scaled_taps(2)
    model = hq.model("qwen3_vl")
    clip = read_frames(sample_video(), 4)
    inputs, n = ttft.qwen3_inputs(model, clip, 64 * 64, model.dtype)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    ids = inputs["input_ids"][0].tolist()
    cfg = model.config
    assert t == 2 and n == t * h * w // 4 == ids.count(cfg.video_token_id)
    assert ids.count(cfg.vision_start_token_id) == ids.count(cfg.vision_end_token_id) == t
    first = ids.index(cfg.vision_start_token_id)
    assert first == 5 and ids[first + 1 + h * w // 4] == cfg.vision_end_token_id
    times, got = ttft.one_row(model, inputs, "cpu", "aot", 0.25)
    assert got == aot.budget(0.25, t, h * w // 4)
