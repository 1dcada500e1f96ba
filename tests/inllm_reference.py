"""The eager, layer-by-layer answer for FastV and PDrop shared by test_inllm (LLaVA-OneVision, 1-D
RoPE) and test_qwen_inllm (Qwen2.5-VL, 3-D M-RoPE).

The language model's layers run one by one with eager attention (weights taken from the attention
module itself), visual tokens are dropped by hand between layers with freshly built masks and RoPE
tables made by the model's rotary embedding at the kept tokens' original position ids; no KV cache.
"""

from __future__ import annotations

import torch

import aot


def llm_inputs(ref, inp):
    """inputs_embeds (B, L, d) and position_ids (None, (B, L) or (3, B, L)) the unpatched model gives
    its language model."""
    got = {}

    def grab(_m, _a, kw):
        got.update(embeds=kw["inputs_embeds"], position_ids=kw.get("position_ids"))

    h = ref.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        ref(**inp, use_cache=False)
    h.remove()
    return got["embeds"], got["position_ids"]


def last_real(mask2d):
    """(B,) index of each row's last real (unpadded) token."""
    pos = torch.arange(mask2d.shape[1]).expand_as(mask2d)
    return torch.where(mask2d.bool(), pos, -1).amax(1)


def reference(ref, embeds, ids, mask2d, positions, stages, query, *, mrope=False, after_layer=None):
    """Logits (B, n, V) and kept original positions (B, n): layers by hand, eager, tokens dropped by hand.

    positions: the unpruned prompt's position ids, (B, L) 1-D RoPE ids (LLaVA; each layer is also
    given them as ``position_ids``) or, with ``mrope``, (3, B, L) M-RoPE (t, h, w) ids (Qwen2.5-VL);
    gathered for the kept tokens. query (B,): the original position of the scoring row.
    after_layer(i, h, idx) -> h: applied to every layer's output (Qwen3-VL's DeepStack injections),
    idx (B, n) the original positions still in the sequence.
    """
    lm = ref.model.language_model
    b, length, _ = embeds.shape
    video = ids == ref.config.video_token_id
    idx = torch.arange(length).expand(b, length)  # original positions of the current sequence
    h = embeds
    rows = torch.arange(b)

    def state():
        if mrope:
            pos = positions.gather(2, idx[None].expand(3, -1, -1))  # (3, B, n): original t, h, w ids
        else:
            pos = positions.gather(1, idx)
        cos_sin = lm.rotary_emb(h, pos)
        real = mask2d.gather(1, idx).bool()
        allowed = (idx[:, None, :] <= idx[:, :, None]) & real[:, None, :]
        allowed |= torch.eye(idx.shape[1], dtype=torch.bool)[None]  # padding rows attend themselves: no NaN
        add = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
        return pos, cos_sin, add

    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            pos, cos_sin, add = state()
            for st in stages:
                if st.score_layer == i:
                    _, weights = layer.self_attn(layer.input_layernorm(h), position_embeddings=cos_sin,
                                                 attention_mask=add)
                    qi = (idx == query[:, None]).float().argmax(1)
                    scores = weights[rows, :, qi].mean(1)  # (B, n): the query row, averaged over heads
            for st in stages:
                if st.prune_before == i:
                    vis = video.gather(1, idx)
                    kept = ~vis
                    for r in range(b):
                        cand = vis[r].nonzero().squeeze(1)
                        order = torch.argsort(scores[r, cand], descending=True)
                        kept[r, cand[order[:st.keep]]] = True
                    sel = torch.stack([kept[r].nonzero().squeeze(1) for r in range(b)])
                    idx = idx.gather(1, sel)
                    h = h.gather(1, sel[..., None].expand(-1, -1, h.shape[-1]))
                    pos, cos_sin, add = state()
            extra = {} if mrope else {"position_ids": pos}
            h = layer(h, attention_mask=add, position_embeddings=cos_sin, **extra)
            if after_layer is not None:
                h = after_layer(i, h, idx)
        return ref.lm_head(lm.norm(h)), idx


def patched_forward_equals_reference(m, config, inp, want, want_idx, text_layers):
    """aot.patch(m, config) on the SDPA model m, one forward on inp: the tokens kept at the last layer
    are the reference's (want_idx) and the logits of the real rows equal its logits (want). Returns
    the output."""
    mask2d = inp["attention_mask"]
    assert m.config.text_config._attn_implementation == "sdpa"
    aot.patch(m, config)
    with torch.no_grad():
        out = m(**inp)
    kept = out.past_key_values._aot_inllm.kept[text_layers - 1]
    assert torch.equal(kept, want_idx)
    real = mask2d.gather(1, want_idx).bool()
    assert out.logits.shape == want.shape
    torch.testing.assert_close(out.logits[real], want[real], atol=2e-4, rtol=1e-4)
    return out
