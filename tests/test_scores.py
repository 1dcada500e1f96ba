"""Attention scores from hooks (aot.models.scores) against transformers' own eager attention maps."""

from __future__ import annotations

import pytest
import torch

from aot.models.scores import attention_received, cls_attention, hf_qk, record_scores

transformers = pytest.importorskip("transformers")

LAYERS = 3


def tiny_dinov2(attn_implementation: str):
    """A randomly initialised 3-layer DINOv2: 32 wide, 2 heads, 56 px images -> 4x4 patches + CLS = 17 tokens."""
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=56,
        patch_size=14,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return transformers.Dinov2Model(config).eval()


@pytest.fixture(scope="module")
def models():
    eager = tiny_dinov2("eager")
    sdpa = tiny_dinov2("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    return eager, sdpa


@pytest.fixture(scope="module")
def pixels():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 56, 56, generator=generator)  # (B, 3, H, W)


def attention_modules(model) -> dict[str, torch.nn.Module]:
    return {f"layer{i}": block.attention for i, block in enumerate(model.encoder.layer)}


def reference_maps(eager, pixels):
    with torch.no_grad():
        out = eager(pixel_values=pixels, output_attentions=True)
    assert len(out.attentions) == LAYERS
    return out.attentions  # LAYERS x (B, heads, T, T)


@pytest.mark.parametrize("chunk", [None, 5, 256])
def test_received_scores_match_eager_attentions(models, pixels, chunk):
    eager, sdpa = models
    maps = reference_maps(eager, pixels)
    with torch.no_grad(), record_scores(attention_modules(sdpa), hf_qk, chunk=chunk) as recorded:
        sdpa(pixel_values=pixels)
    for i, attn in enumerate(maps):
        (scores,) = recorded[f"layer{i}"]
        assert scores.shape == (3, 17) and scores.dtype == torch.float32
        torch.testing.assert_close(scores, attn.mean(dim=1).mean(dim=1), atol=1e-5, rtol=0)
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_cls_scores_match_eager_attentions(models, pixels):
    eager, sdpa = models
    maps = reference_maps(eager, pixels)
    with torch.no_grad(), record_scores(attention_modules(sdpa), hf_qk, reduce="cls") as recorded:
        sdpa(pixel_values=pixels)
    for i, attn in enumerate(maps):
        torch.testing.assert_close(recorded[f"layer{i}"][0], attn[:, :, 0].mean(dim=1), atol=1e-5, rtol=0)


def test_hooks_leave_the_model_output_unchanged(models, pixels):
    _, sdpa = models
    with torch.no_grad():
        plain = sdpa(pixel_values=pixels).last_hidden_state
        with record_scores(attention_modules(sdpa)):
            hooked = sdpa(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(hooked, plain, atol=0, rtol=0)


def test_each_forward_appends_one_entry(models, pixels):
    _, sdpa = models
    with torch.no_grad(), record_scores({"last": sdpa.encoder.layer[-1].attention}) as recorded:
        sdpa(pixel_values=pixels[:2])
        sdpa(pixel_values=pixels[2:])
    assert [s.shape for s in recorded["last"]] == [(2, 17), (1, 17)]


def test_hooks_are_removed_on_exit_and_on_error(models, pixels):
    _, sdpa = models
    modules = attention_modules(sdpa)
    assert all(not m._forward_pre_hooks for m in modules.values())
    with record_scores(modules):
        assert all(len(m._forward_pre_hooks) == 1 for m in modules.values())
    assert all(not m._forward_pre_hooks for m in modules.values())

    with pytest.raises(RuntimeError, match="boom"):
        with record_scores(modules):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in modules.values())


def test_custom_reduce_and_qk_fn(models, pixels):
    _, sdpa = models
    calls = []

    def qk(module, hidden):
        calls.append(hidden.shape)
        return hf_qk(module, hidden)

    def key_norm(q, k):
        return k.norm(dim=-1).mean(dim=1)  # (B, T)

    with torch.no_grad(), record_scores({"l0": sdpa.encoder.layer[0].attention}, qk, reduce=key_norm) as rec:
        sdpa(pixel_values=pixels)
    assert calls == [(3, 17, 32)]
    assert rec["l0"][0].shape == (3, 17)


# --------------------------------------------------------------------------- the reductions themselves


def naive_received(q, k):
    attn = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return attn.mean(dim=(1, 2)).float()


def test_chunked_equals_unchunked_and_naive():
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 37, 16, generator=generator)
    k = torch.randn(2, 4, 29, 16, generator=generator)  # cross-attention shapes: Tq != Tk
    full = attention_received(q, k, chunk=None)
    assert full.shape == (2, 29)
    for chunk in (1, 7, 36, 37, 1000):
        torch.testing.assert_close(attention_received(q, k, chunk=chunk), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(full, naive_received(q, k), atol=1e-6, rtol=0)


def test_half_precision_inputs_are_scored_in_float32():
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 20, 8, generator=generator)
    k = torch.randn(1, 2, 20, 8, generator=generator)
    scores = attention_received(q.bfloat16(), k.bfloat16(), chunk=6)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, naive_received(q.bfloat16().float(), k.bfloat16().float()), atol=1e-6, rtol=0)


def test_cls_attention_rows():
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, 10, 8, generator=generator)
    k = torch.randn(2, 3, 10, 8, generator=generator)
    attn = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)  # (B, heads, T, T)
    torch.testing.assert_close(cls_attention(q, k), attn[:, :, 0].mean(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(cls_attention(q, k, index=-1), attn[:, :, -1].mean(dim=1), atol=1e-6, rtol=0)


def test_argument_errors(models):
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="4-D"):
        attention_received(q[0], q[0])
    with pytest.raises(ValueError, match="share batch"):
        attention_received(q, torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="chunk"):
        attention_received(q, q, chunk=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        attention_received(q.numpy(), q)
    with pytest.raises(ValueError, match="index"):
        cls_attention(q, q, index=5)
    module = models[1].encoder.layer[0].attention
    with pytest.raises(ValueError, match="reduce"):
        with record_scores({"a": module}, reduce="mean"):
            pass
    with pytest.raises(TypeError, match="mapping"):
        with record_scores([module]):
            pass
    with pytest.raises(TypeError, match="q_proj"):
        hf_qk(torch.nn.Linear(4, 4), torch.randn(1, 2, 4))
    assert not module._forward_pre_hooks


def test_hook_reads_keyword_input_and_rejects_masks(models):
    _, sdpa = models
    module = sdpa.encoder.layer[0].attention
    hidden = torch.randn(2, 5, 32)  # (B, T, d)
    with torch.no_grad(), record_scores({"a": module}) as recorded:
        module(hidden_states=hidden)
        with pytest.raises(NotImplementedError, match="attention mask"):
            module(hidden, attention_mask=torch.zeros(2, 1, 5, 5))
    q, k = hf_qk(module, hidden)
    torch.testing.assert_close(recorded["a"][0], naive_received(q, k), atol=1e-6, rtol=0)
