"""aot.patch on the real-weights model (DINOv2 ViT-S/14 + SmolLM2-135M, aot.models.assembled).

Its answers mean nothing (random projector), but its tower, attention and LLM are real: retention
1.0 must give the unpatched logits, and at 10% the language model must receive exactly the tokens
aot.compress makes from an eager attention map of the real tower.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aot
import aot.methods
from aot.models.assembled import load_dinov2_smollm2, preprocess_frames, video_prompt
from aot.video import read_frames

SAMPLE = Path(__file__).resolve().parents[1] / "aot" / "assets" / "bigbuckbunny.mp4"
FRAMES = 4


@pytest.fixture(scope="module")
def setup():
    model, tok = load_dinov2_smollm2()
    frames = read_frames(SAMPLE, num_frames=FRAMES).frames
    inputs = {**video_prompt(tok, "What happens in this video?", FRAMES),
              "pixel_values_videos": preprocess_frames(frames)[None]}
    return model, inputs


def test_real_weights_retention_one_is_the_unpatched_model(setup):
    model, inputs = setup
    with torch.inference_mode():
        ref = model(**inputs).logits
    aot.patch(model, aot.AOTConfig(retention=1.0))
    try:
        with torch.inference_mode():
            got = model(**inputs).logits
    finally:
        aot.unpatch(model)
    assert torch.equal(got, ref)


def test_real_weights_lm_receives_the_compressed_tokens(setup):
    model, inputs = setup
    inner = model.model
    cfg = aot.AOTConfig(retention=0.1)
    # independent reference: eager attention maps of layers 5 and -2 (CLS column dropped), bilinear 27 -> 14
    tower = inner.vision_tower
    old = tower.config._attn_implementation
    tower.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = tower(inputs["pixel_values_videos"][0], output_attentions=True, output_hidden_states=True)
    finally:
        tower.set_attn_implementation(old)
    pool = lambda t: F.interpolate(t, size=(14, 14), mode="bilinear")  # noqa: E731
    with torch.inference_mode():
        proj = inner.multi_modal_projector(out.hidden_states[-2][:, 1:])  # (F, 729, 576)
        feats = pool(proj.reshape(FRAMES, 27, 27, -1).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        s = [pool(out.attentions[i].mean(1).mean(1)[:, 1:].reshape(FRAMES, 1, 27, 27)).reshape(FRAMES, 196)
             for i in (5, -2)]
        want = aot.compress(feats, s[1], local_scores=s[0], grid=(14, 14), config=cfg)
    seen = []
    handle = inner.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    aot.patch(model, cfg)
    try:
        with torch.inference_mode():
            model(**inputs)
        last = model._aot.last
    finally:
        aot.unpatch(model)
        handle.remove()
    r = aot.budget(0.1, FRAMES, 196)
    assert last["tokens_out"] == r == want.tokens.shape[0]
    ids = inputs["input_ids"][0]
    video_id = model.config.video_token_id
    start = int((ids == video_id).nonzero()[0])
    emb = seen[0][0]
    assert emb.shape[0] == ids.numel() - (FRAMES * 196 - r)
    assert torch.allclose(emb[start:start + r], want.tokens, atol=1e-4)
    assert torch.equal(emb[start + r], inner.image_newline.to(emb.dtype))


def test_real_weights_in_llm_methods(setup):
    """FastV / PDrop on a real Llama-architecture LLM (SmolLM2, 30 layers): retention 1.0 is the
    unpatched model; PDrop's published schedule prunes at 8/16/24 and the cache holds it."""
    model, inputs = setup
    with torch.inference_mode():
        ref = model(**inputs).logits
    aot.patch(model, aot.methods.get("fastv").config(retention=1.0))
    try:
        with torch.inference_mode():
            assert torch.equal(model(**inputs).logits, ref)
    finally:
        aot.unpatch(model)
    aot.patch(model, aot.methods.get("pdrop").config())
    try:
        with torch.inference_mode():
            out = model(**inputs)
        seq = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        last = model._aot.last
    finally:
        aot.unpatch(model)
    n = FRAMES * 196 + 1
    assert last["tokens_in"] == n and last["schedule"] == [(8, aot.budget(0.5, 1, n)), (16, aot.budget(0.25, 1, n)),
                                                           (24, aot.budget(0.125, 1, n))]
    lengths = [layer.keys.shape[-2] for layer in out.past_key_values.layers]
    length = inputs["input_ids"].shape[1]
    assert lengths[:8] == [length] * 8 and lengths[24:] == [length - n + aot.budget(0.125, 1, n)] * 6
    assert seq.shape[1] == length + 2
