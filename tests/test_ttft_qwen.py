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


def test_qwen_fastv_row_and_its_llm_flops():
    """The FastV row on a 4-layer Qwen2.5-VL: the tokens it keeps after layer K = 2 and the LLM prefill
    FLOPs its schedule implies (2 layers on every visual token, 2 on the kept ones), by hand; the
    retention --llm-match picks equals aot's FLOPs at 25% as closely as any kept count can; PDrop's
    8/16/24 of 36 layers scaled to the depth."""
    model = hq.model(text_layers=4)
    inputs = hq.processor()(text="<|vision_start|><|video_pad|><|vision_end|> what moves ?",
                            videos=[hq.frames(8, height=48)], return_tensors="pt")
    v = int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum())
    r = 0.5
    times, n = ttft.one_row(model, inputs, "cpu", "fastv", r, config=ttft.llm_config("fastv", r))
    keep = int(r * v + 0.5)  # round half up
    assert n == keep and times["compression"] > 0 and times["prefill"] > 0
    assert getattr(model, "_aot", None) is None

    text = model.config.text_config
    d, m, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    assert (d, m, layers) == (64, 128, 4)

    def layer(tokens):  # paper Eq. 17, one layer
        return 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * m

    spec = aot.flops.spec_from_config(model.config.to_dict()["text_config"]).llm
    got = ttft.llm_prefill_flops(spec, "fastv", ttft.llm_config("fastv", r), n, v)
    assert got == 2 * layer(v) + 2 * layer(keep)
    assert ttft.schedule_text(spec, "fastv", ttft.llm_config("fastv", r), n, v) == f"{v} from 0, {keep} from 2"

    # equal FLOPs: no kept count is closer to aot at 25% than the one chosen
    target = layers * layer(int(0.25 * v + 0.5))
    by_hand = min(range(1, v + 1), key=lambda k: abs(2 * layer(v) + 2 * layer(k) - target))
    rm = ttft.equal_flops_retention(spec, "fastv", v, target)
    assert round(rm * v) == by_hand
    times, n = ttft.one_row(model, inputs, "cpu", "fastv", rm, config=ttft.llm_config("fastv", rm))
    assert n == by_hand

    assert ttft.scaled_pdrop_layers(9) == (2, 4, 6) and ttft.scaled_pdrop_layers(36) == (8, 16, 24)
    assert ttft.llm_config("pdrop", 0.5, (1, 2, 3)).layers == (1, 2, 3)
