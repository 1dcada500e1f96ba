"""The adapters hook the shallow score block only when the method reads it (AOT with global_share < 1).

Since issue 22 AOT's default is global_share=1.0 (every anchor by the deep block's score), so a
patched model computes one block's scores, not two; the output must not change for it. Counted
with the score reduction each adapter calls (once per frame batch or per slice and block)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")  # transformers' video processors need it

import aot  # noqa: E402
import aot.models.llava_onevision as llava_mod  # noqa: E402
import aot.models.qwen2_5_vl as qwen_mod  # noqa: E402
import hf_tiny  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
import hf_tiny_qwen3 as hq3  # noqa: E402

V25 = "<|vision_start|><|video_pad|><|vision_end|>"


def _counting(monkeypatch, module):
    calls = []
    real = module.attention_received

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, "attention_received", counted)
    return calls


def _family_cases():
    return {
        "llava": (lambda: hf_tiny.model(), lambda: hf_tiny.processor()(
            text=["<video> what is it ?"], videos=[hf_tiny.frames(4, seed=0)], return_tensors="pt"),
                  llava_mod, dict(local_layer=1, global_layer=-2)),
        "qwen2_5_vl": (lambda: hq.model(), lambda: hq.processor()(
            text=[V25 + " what is it ?"], videos=[hq.frames(4, seed=0)], return_tensors="pt"), qwen_mod, {}),
        "qwen3_vl": (lambda: hq3.model("qwen3_vl"), lambda: hq3.processor()(
            text=[V25 + " what is it ?"], videos=[hq3.frames(4, seed=0)], return_tensors="pt"), qwen_mod, {}),
    }


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "qwen3_vl"])
def test_one_score_block_by_default_two_with_local_anchors(family, monkeypatch):
    make_model, make_inputs, module, layers = _family_cases()[family]
    inp = make_inputs()
    counts, logits = {}, {}
    for label, cfg in (("default", aot.AOTConfig(retention=0.25)),
                       ("same, local hook forced", None),
                       ("local anchors", aot.AOTConfig(retention=0.25, global_share=0.5))):
        model = make_model().eval()
        calls = _counting(monkeypatch, module)
        if cfg is None:  # global_share 0.999: the local hook runs; 0.999 * M rounds to M global anchors here
            cfg = aot.AOTConfig(retention=0.25, global_share=0.999)
        aot.patch(model, cfg, **layers)
        with torch.no_grad():
            logits[label] = model(**inp).logits
        counts[label] = len(calls)
        monkeypatch.undo()
    assert counts["default"] > 0
    assert counts["local anchors"] == 2 * counts["default"]  # the shallow block too, as often
    assert counts["same, local hook forced"] == 2 * counts["default"]
    # skipping the hook changes nothing: the scores it would give are not read at global_share 1
    assert torch.equal(logits["default"], logits["same, local hook forced"])
    assert not torch.equal(logits["default"], logits["local anchors"])  # local anchors do change the output


def test_other_methods_never_hook_the_shallow_block(monkeypatch):
    calls = _counting(monkeypatch, llava_mod)
    model = hf_tiny.model().eval()
    inp = hf_tiny.processor()(text=["<video> what is it ?"], videos=[hf_tiny.frames(4, seed=0)], return_tensors="pt")
    aot.patch(model, aot.methods.get("visionzip").config(retention=0.25), local_layer=1, global_layer=-2)
    with torch.no_grad():
        model(**inp)
    one_block = len(calls)
    calls.clear()
    model2 = hf_tiny.model().eval()
    aot.patch(model2, aot.AOTConfig(retention=0.25, global_share=0.5), local_layer=1, global_layer=-2)
    with torch.no_grad():
        model2(**inp)
    assert one_block > 0 and len(calls) == 2 * one_block
