"""benchmarks/ttft.py's row on a Qwen2.5-VL model (tiny and random here): visual tokens against the
processor's placeholder count and aot.budget, every stage timed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

import aot  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ttft  # noqa: E402


def test_qwen_row_counts_and_times():
    model = hq.model()
    inputs = hq.processor()(text="<|vision_start|><|video_pad|><|vision_end|> what moves ?",
                            videos=[hq.frames(8, height=48)], return_tensors="pt")
    placeholders = int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    t, h, w = inputs["video_grid_thw"][0].tolist()
    times, n = ttft.one_row(model, inputs, "cpu")
    assert n == placeholders == t * h * w // 4 and times["vision tower"] > 0 and times["prefill"] > 0
    times, n = ttft.one_row(model, inputs, "cpu", "aot", 0.25)
    assert n == aot.budget(0.25, t, h * w // 4) and times["scores"] > 0 and times["compression"] > 0
    assert getattr(model, "_aot", None) is None  # unpatched after the row
