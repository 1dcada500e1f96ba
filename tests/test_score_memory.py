"""benchmarks/score_memory.py on a tiny SigLIP tower: its four variants compute the same scores."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import score_memory as SM  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=56)  # 4x4 patches


def test_variants_agree_on_a_tiny_siglip_tower():
    model = SM.build_tower(7, **TINY)
    assert model.config._attn_implementation == "sdpa"
    x = SM.pixels(3, size=56)
    with torch.inference_mode():
        plain = model(pixel_values=x).last_hidden_state
        results = {v: SM.RUNNERS[v](model, x, 5) for v in SM.VARIANTS}
        assert results["sdpa"][0] == {}
        ours, (hook_wall, hook_cpu) = results["ours"]
        assert hook_wall > 0 and hook_cpu >= 0
        assert set(ours) == {"layer5", "layer-2"}
        for ref in ("eager-all", "eager-two"):
            for name, scores in results[ref][0].items():
                assert scores.shape == (3, 16)
                torch.testing.assert_close(ours[name], scores, rtol=0, atol=1e-6)
        # the variants leave the tower as they found it: SDPA, no hooks
        SM._set_attention(model, "sdpa")
        torch.testing.assert_close(model(pixel_values=x).last_hidden_state, plain, rtol=0, atol=1e-6)
    # our pre-hooks are gone; transformers' own output-capturing hooks (installed lazily by
    # output_attentions) stay, but a second round of the variants adds none
    assert all(not m._forward_pre_hooks for m in model.modules())
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    with torch.inference_mode():
        for v in SM.VARIANTS:
            SM.RUNNERS[v](model, x, 5)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks


def test_eager_maps_size():
    assert SM.eager_maps_bytes(8, 27) == 27 * 8 * 16 * 729 * 729 * 4
