"""Clips and inter-frame OT (Eq. 13-16) against a plain sequential loop with POT."""

import numpy as np
import ot
import torch

from aot.temporal import aggregate_inter, default_clip_length, dynamic_clips, uniform_clips


def test_uniform_clips():
    assert default_clip_length(32) == 4 and default_clip_length(64) == 8 and default_clip_length(256) == 32
    # at least 2 frames (a single frame stays 1), so every clip has an inter-frame stage
    assert default_clip_length(5) == 2 and default_clip_length(15) == 2 and default_clip_length(1) == 1
    # at most floor(1 / (anchor_share * retention)), so a clip's anchors fit in one frame
    assert default_clip_length(32, 0.1, 0.7) == 4 and default_clip_length(64, 0.15, 0.7) == 8  # the paper's settings
    assert default_clip_length(256, 0.1, 0.7) == 14 and default_clip_length(64, 0.25, 0.7) == 5
    assert default_clip_length(64, 0.25, 0.5) == 8  # 1 / 0.125 = 8 exactly, not 7.999...
    assert default_clip_length(64, 0.9, 0.7) == 2 and default_clip_length(64, 0.5, 0.0) == 8
    assert uniform_clips(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert uniform_clips(3, 1) == [(0, 1), (1, 1), (2, 1)]


def test_dynamic_clips_cut_at_scene_changes():
    # three "scenes" with orthogonal features and tiny noise: cuts after frames 2 and 6
    g = torch.Generator().manual_seed(0)
    base = torch.eye(3)[[0, 0, 0, 1, 1, 1, 1, 2, 2, 2]]
    feats = base + 0.01 * torch.randn(10, 3, generator=g)
    assert dynamic_clips(feats, length=5, tau=0.9) == [(0, 3), (3, 4), (7, 3)]  # c-1 = 1 cut, tau adds the other
    assert dynamic_clips(feats, length=5, tau=-1.0) == [(0, 3), (3, 7)] or \
        dynamic_clips(feats, length=5, tau=-1.0) == [(0, 7), (7, 3)]  # only the least similar pair
    assert dynamic_clips(feats[:1], length=4, tau=0.9) == [(0, 1)]


def _row_assignment(tokens, anchors, reg, iters):
    tn = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    an = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    m = len(tokens)
    plan = ot.sinkhorn(np.full(m, 1 / m), np.full(len(anchors), 1 / len(anchors)), 1 - tn @ an.T, reg,
                       numItermax=iters, stopThr=0, warn=False)
    return plan / plan.sum(1, keepdims=True)


def test_matches_sequential_loop():
    g = torch.Generator().manual_seed(0)
    f, m, d = 7, 6, 5
    tokens = torch.randn(f, m, d, generator=g, dtype=torch.float64)
    sizes = torch.randint(1, 5, (f, m), generator=g)
    clips = [(0, 3), (3, 4)]
    n_keep, lam = 5, 1.0
    got = aggregate_inter(tokens, sizes, clips, n_keep, reg=0.1, n_iters=60, lam=lam, keep_by="plan")

    x = tokens.numpy()
    # selection: q of every later token against its keyframe, the n_keep lowest over the video
    qs = {}
    for s, n in clips:
        for t in range(s + 1, s + n):
            qs[t] = _row_assignment(x[t], x[s], 0.1, 60).max(1)
    flat = sorted(((qs[t][i], t, i) for t in qs for i in range(m)), key=lambda r: r[0])
    kept = {(t, i) for _, t, i in flat[:n_keep]}
    assert {tuple(p) for p in torch.nonzero(got.kept).tolist()} == kept
    # merge: sequential Eq. 16 with the current anchors
    for c, (s, n) in enumerate(clips):
        anchors = x[s].copy()
        anchor_sizes = sizes[s].numpy().copy()
        for t in range(s + 1, s + n):
            p = _row_assignment(x[t], anchors, 0.1, 60)
            new = anchors.copy()
            for j in range(m):
                merged = [i for i in range(m) if (t, i) not in kept]
                recv = sum(p[i, j] for i in merged)
                ctx = sum(p[i, j] * x[t, i] for i in merged)
                new[j] = (anchors[j] + lam * ctx) / (1 + lam * recv)
            for i in range(m):
                if (t, i) not in kept:
                    anchor_sizes[p[i].argmax()] += int(sizes[t, i])
                    assert got.owner[t, i] == p[i].argmax()
                else:
                    assert got.owner[t, i] == -1
            anchors = new
        np.testing.assert_allclose(got.anchors[c].numpy(), anchors, rtol=1e-8, atol=1e-10)
        assert got.anchor_sizes[c].tolist() == anchor_sizes.tolist()
    total = got.anchor_sizes.sum() + sizes[got.kept].sum()
    assert int(total) == int(sizes.sum())


def test_static_clip_merges_into_unchanged_anchors():
    # a frame that repeats the keyframe is matched one-to-one (q ~ 1): merging each anchor with its
    # own copy leaves it where it was, and every anchor now stands for two tokens
    g = torch.Generator().manual_seed(0)
    frame0 = torch.randn(5, 16, generator=g, dtype=torch.float64)
    tokens = torch.stack([frame0, frame0, frame0])
    got = aggregate_inter(tokens, torch.ones(3, 5, dtype=torch.long), [(0, 3)], 0, reg=0.01, n_iters=300)
    torch.testing.assert_close(got.anchors[0], frame0)
    assert got.anchor_sizes[0].tolist() == [3] * 5 and not got.kept.any()
    assert got.owner[1:].tolist() == [list(range(5))] * 2
    assert (got.q[1:] > 0.99).all()


def test_budget_of_kept_tokens_is_exact():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(9, 6, 8, generator=g)
    for n_keep in (0, 1, 7, 36):  # 36 = every later-frame token (9 frames, 3 clips of 3)
        got = aggregate_inter(tokens, torch.ones(9, 6, dtype=torch.long), [(0, 3), (3, 3), (6, 3)], n_keep)
        assert int(got.kept.sum()) == n_keep and not got.kept[[0, 3, 6]].any()


def test_keep_by_cosine_keeps_the_least_similar_tokens():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(6, 5, 8, generator=g, dtype=torch.float64)
    got = aggregate_inter(tokens, torch.ones(6, 5, dtype=torch.long), [(0, 3), (3, 3)], 4, keep_by="cosine")
    x = tokens.numpy()
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    best = {(t, i): max(unit[t, i] @ unit[s, j] for j in range(5)) for s in (0, 3) for t in (s + 1, s + 2) for i in range(5)}
    want = {k for k, _ in sorted(best.items(), key=lambda kv: kv[1])[:4]}
    assert {tuple(p) for p in torch.nonzero(got.kept).tolist()} == want


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_keep_ref_previous_keeps_the_tokens_least_like_the_previous_frame():
    g = torch.Generator().manual_seed(4)
    tokens = torch.randn(8, 5, 8, generator=g, dtype=torch.float64)
    clips = [(0, 4), (4, 4)]
    got = aggregate_inter(tokens, torch.ones(8, 5, dtype=torch.long), clips, 6, keep_ref="previous")
    u = _unit(tokens.numpy())
    best = {(t, i): max(u[t, i] @ u[t - 1, j] for j in range(5)) for s, n in clips for t in range(s + 1, s + n)
            for i in range(5)}
    want = {k for k, _ in sorted(best.items(), key=lambda kv: kv[1])[:6]}
    assert {tuple(p) for p in torch.nonzero(got.kept).tolist()} == want
    # the keyframe rule picks a different set on the same tokens (the option changes something)
    key = aggregate_inter(tokens, torch.ones(8, 5, dtype=torch.long), clips, 6)
    assert not torch.equal(key.kept, got.kept)


def test_unmatched_anchor_guard_matches_sequential_loop():
    g = torch.Generator().manual_seed(5)
    f, m, d = 7, 6, 5
    tokens = torch.randn(f, m, d, generator=g, dtype=torch.float64)
    sizes = torch.randint(1, 5, (f, m), generator=g)
    clips = [(0, 3), (3, 4)]
    n_keep, reg, iters = 5, 0.1, 60
    got = aggregate_inter(tokens, sizes, clips, n_keep, reg=reg, n_iters=iters, guard=True)
    x = tokens.numpy()
    u = _unit(x)
    best = {(t, i): max(u[t, i] @ u[s, j] for j in range(m)) for s, n in clips for t in range(s + 1, s + n)
            for i in range(m)}
    kept = {k for k, _ in sorted(best.items(), key=lambda kv: kv[1])[:n_keep]}
    assert {tuple(p) for p in torch.nonzero(got.kept).tolist()} == kept
    tau = max(best[k] for k in kept)
    skipped = 0
    for c, (s, n) in enumerate(clips):
        anchors = x[s].copy()
        for t in range(s + 1, s + n):
            merged = [i for i in range(m) if (t, i) not in kept]
            cos = _unit(x[t]) @ _unit(anchors).T  # (tokens, anchors)
            cols = [j for j in range(m) if max(cos[i, j] for i in merged) > tau] or list(range(m))
            skipped += m - len(cols)
            b = np.zeros(m)
            b[cols] = 1 / len(cols)
            plan = ot.sinkhorn(np.full(m, 1 / m), b, 1 - cos, reg, numItermax=iters, stopThr=0, warn=False)
            p = plan / plan.sum(1, keepdims=True)
            new = anchors.copy()
            for j in range(m):
                recv = sum(p[i, j] for i in merged)
                new[j] = (anchors[j] + sum(p[i, j] * x[t, i] for i in merged)) / (1 + recv)
                if j not in cols:
                    assert recv < 1e-12  # a skipped anchor receives nothing
            anchors = new
        np.testing.assert_allclose(got.anchors[c].numpy(), anchors, rtol=1e-7, atol=1e-9)
    assert skipped > 0  # the case exercises the guard


def test_unmatched_anchor_guard_keeps_an_object_seen_only_on_the_keyframe():
    # keyframe: 5 background tokens + one "needle" orthogonal to them; later frames: background only
    g = torch.Generator().manual_seed(6)
    d = 16
    background = torch.randn(5, d, generator=g, dtype=torch.float64)
    background[:, 0] = 0.0
    needle = torch.zeros(d, dtype=torch.float64)
    needle[0] = 1.0
    frames = [torch.cat([background, needle[None]])]
    for _ in range(3):
        frames.append(background[torch.tensor([0, 1, 2, 3, 4, 4])] + 0.05 * torch.randn(6, d, generator=g, dtype=torch.float64))
    tokens = torch.stack(frames)
    ones = torch.ones(4, 6, dtype=torch.long)
    cos = lambda a: float(a @ needle / a.norm())  # noqa: E731
    plain = aggregate_inter(tokens, ones, [(0, 4)], 1)
    guarded = aggregate_inter(tokens, ones, [(0, 4)], 1, guard=True)
    assert cos(plain.anchors[0, 5]) < 0.6  # balanced OT: the needle anchor absorbed background each frame
    assert cos(guarded.anchors[0, 5]) > 0.999 and guarded.anchor_sizes[0, 5] == 1
    assert int(guarded.anchor_sizes.sum() + ones[guarded.kept].sum()) == 24


def test_anchor_density_sets_the_clip_length():
    """anchor_density d: L = round_half_up(d / (anchor_share * retention)) in [2, F], so a keyframe
    gets about d * N anchors; 0.64 at 32 x 196, 10%, anchor_share 0.7 gives 9-frame clips and
    0.7 * 0.1 * 9 * 196 = 123 anchors a keyframe, near the paper's Sec. 7 figure of 126."""
    import pytest
    import torch

    from aot import compress
    from aot.config import AOTConfig
    from aot.temporal import clip_length_of

    def L(frames=32, **kw):
        return clip_length_of(AOTConfig(**kw), frames)

    assert L(retention=0.1, anchor_share=0.7) == 9  # 0.64 / 0.07 = 9.14
    assert L(retention=0.15, anchor_share=0.7) == 6  # 6.10
    assert L(retention=0.25, anchor_share=0.7) == 4  # 3.66
    assert L(retention=0.25, anchor_share=0.7, anchor_density=0.5) == 3  # 2.857
    assert L(retention=0.1, anchor_share=0.7, anchor_density=0.35) == 5  # 0.35 / 0.07 = 5.0 exactly
    # the defaults (anchor_density 0.64, anchor_share 0.5): 12.8, 8.53, 5.12
    assert (L(retention=0.1), L(retention=0.15), L(retention=0.25)) == (13, 9, 5)
    assert L(retention=0.9, anchor_density=0.1) == 2  # floor of 2
    assert L(retention=0.01, anchor_density=1.0) == 32  # at most F
    assert L(frames=1, retention=0.5) == 1
    assert L(retention=0.1, anchor_density=None) == 4  # unset: the F // 8 rule
    assert L(retention=0.1, clip_length=6) == 6  # an explicit clip_length wins over the density
    # compress runs those clips: the same output as clip_length=13 set by hand, exact budget
    torch.manual_seed(0)
    x, s = torch.randn(32, 196, 16), torch.rand(32, 196)
    out = compress(x, s, grid=(14, 14), config=AOTConfig(retention=0.1))
    ref = compress(x, s, grid=(14, 14), config=AOTConfig(retention=0.1, clip_length=13, anchor_density=None))
    assert out.tokens.shape[0] == 627 and torch.equal(out.tokens, ref.tokens)
    assert torch.equal(out.positions, ref.positions)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="anchor_density"):
            AOTConfig(anchor_density=bad)
