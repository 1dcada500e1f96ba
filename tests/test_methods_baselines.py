"""VisionZip, FastVID, DyCoke, pooling, random: each rule against a plain loop.

The contract they share with every comparison method (exact budget, invariants, batch, identity,
validation) is tested once for all in test_methods_contract.py.
"""

import math

import pytest
import torch

import aot.methods as methods
from aot.config import budget
from aot.methods.baselines import pool_cells
from methods_common import assert_mix, check_invariants


def _video(f, n, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(f, n, d, generator=g).to(dtype), torch.rand(f, n, generator=g)


# ---- VisionZip -----------------------------------------------------------------------------

def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _visionzip_loop(x, s, total, dominant_share, merge, mix=None):
    """{position: (token, size)}; ``mix`` (a dict) gets {position: {flat input: weight}}."""
    f, n, _ = x.shape
    out = {}
    mix = {} if mix is None else mix
    for t in range(f):
        share = (t + 1) * total // f - t * total // f
        k = math.floor(share * dominant_share + 0.5)
        ranked = sorted(range(n), key=lambda i: (-float(s[t, i]), i))
        for i in ranked[:k]:
            out[t * n + i] = (x[t, i], 1)
            mix[t * n + i] = {t * n + i: 1.0}
        c = share - k
        if c == 0:
            continue
        rest = [i for i in range(n) if i not in ranked[:k]]
        step = max(1, len(rest) // c)
        targets = [rest[j] for j in range(0, len(rest), step)][:c]
        members = {i: [] for i in targets}
        for i in rest:
            if i not in targets:
                best = max(targets, key=lambda j: (_cos(x[t, i], x[t, j]), -j))
                members[best].append(i)
        for i in targets:
            m = [x[t, j] for j in members[i]]
            if merge == "sum":
                tok = x[t, i] + (torch.stack(m).mean(0) if m else 0)
                mix[t * n + i] = {t * n + i: 1.0, **{t * n + j: 1 / len(m) for j in members[i]}}
            else:
                tok = (x[t, i] + sum(m)) / (1 + len(m))
                mix[t * n + i] = {t * n + j: 1 / (1 + len(m)) for j in [i] + members[i]}
            out[t * n + i] = (tok, 1 + len(m))
    return out


@pytest.mark.parametrize("dominant_share,merge", [(54 / 64, "sum"), (0.5, "sum"), (0.5, "mean"), (1.0, "sum")])
def test_visionzip_matches_loop(dominant_share, merge):
    x, s = _video(3, 25, d=5, seed=3, dtype=torch.float64)
    config = methods.get("visionzip").config(retention=0.4, dominant_share=dominant_share, merge=merge)
    out = methods.get("visionzip")(x, s, config=config)
    mix = {}
    want = _visionzip_loop(x, s, budget(0.4, 3, 25), dominant_share, merge, mix)
    assert out.positions.tolist() == sorted(want)
    for row, p in enumerate(out.positions.tolist()):
        tok, size = want[p]
        assert torch.allclose(out.tokens[row], tok) and int(out.sizes[row]) == size
    assert_mix(out, mix, 3, 25)  # the contextual merge's weights, from the loop
    assert torch.allclose(out.reduce(x), out.tokens, rtol=0, atol=1e-12)  # rounding-level


# ---- FastVID -------------------------------------------------------------------------------

def _fastvid_loop(x, s, total, c, tau, d_share, p, k, beta, mix=None):
    """{position: (token, size)}; ``mix`` (a dict) gets {position: {flat input: weight}}."""
    f, n, d = x.shape
    mix = {} if mix is None else mix
    # DySeg on the mean token: cut after the c-1 least similar pairs and below tau
    g = [x[t].mean(0) for t in range(f)]
    sims = [_cos(g[t], g[t + 1]) for t in range(f - 1)]
    ranked = sorted(range(f - 1), key=lambda t: (sims[t], t))
    cuts = set(ranked[:min(c, f) - 1]) | {t for t in range(f - 1) if sims[t] < tau}
    segs, start = [], 0
    for t in range(f):
        if t in cuts or t == f - 1:
            segs.append(list(range(start, t + 1)))
            start = t + 1
    shares = [(t + 1) * total // f - t * total // f for t in range(f)]
    n_ctx = [int(sh * d_share) for sh in shares]
    out = {}
    for seg in segs:
        anchors = [t for t in seg if (seg[-1] - t) % p == 0]
        ctx_total = sum(n_ctx[t] for t in seg)
        per_anchor = [(j + 1) * ctx_total // len(anchors) - j * ctx_total // len(anchors) for j in range(len(anchors))]
        rest = []
        for t in seg:
            ranked = sorted(range(n), key=lambda i: (-float(s[t, i]), i))
            sal = shares[t] - n_ctx[t]
            for i in ranked[:sal]:
                out[t * n + i] = (x[t, i], 1)
                mix[t * n + i] = {t * n + i: 1.0}
            rest += [(t, i) for i in sorted(ranked[sal:])]
        ctx = []
        for t, want in zip(anchors, per_anchor):
            cand = [i for (u, i) in rest if u == t]
            dist = [[float((x[t, a] - x[t, b]).norm()) / math.sqrt(d) for b in cand] for a in cand]
            dens = [math.exp(-sum(v * v for v in sorted(row)[:k]) / min(k, len(cand))) for row in dist]
            dmax = max(max(row) for row in dist)
            score = []
            for a in range(len(cand)):
                denser = [dist[a][b] for b in range(len(cand)) if (dens[b], -b) > (dens[a], -a)]
                score.append(dens[a] * (min(denser) if denser else dmax))
            order = sorted(range(len(cand)), key=lambda a: (-score[a], a))
            ctx += [(t, cand[a]) for a in order[:want]]
        members = {c_: [] for c_ in ctx}
        for tok in rest:
            best = tok if tok in members else max(ctx, key=lambda c_: (_cos(x[tok], x[c_]), -ctx.index(c_)))
            members[best].append(tok)
        for c_ in ctx:
            m = len(members[c_])
            w = max(1 / (m + 1), beta)
            out[c_[0] * n + c_[1]] = (w * x[c_] + (1 - w) * torch.stack([x[u] for u in members[c_]]).mean(0), m)
            weights = {u * n + i: (1 - w) / m for u, i in members[c_]}  # the context token is its own member
            weights[c_[0] * n + c_[1]] += w
            mix[c_[0] * n + c_[1]] = weights
    return out


@pytest.mark.parametrize("segments,tau,p", [(2, -1.0, 2), (3, 0.2, 4), (8, 0.9, 4), (1, -1.0, 3)])
def test_fastvid_matches_loop(segments, tau, p):
    x, s = _video(7, 25, d=4, seed=5, dtype=torch.float64)
    x[3:] += 1.5  # a scene change, so tau and the ranking both cut somewhere sensible
    config = methods.get("fastvid").config(retention=0.3, segments=segments, tau=tau, anchor_step=p)
    out = methods.get("fastvid")(x, s, config=config)
    mix = {}
    want = _fastvid_loop(x, s, budget(0.3, 7, 25), segments, tau, 0.4, p, 4, 0.6, mix)
    assert out.positions.tolist() == sorted(want)
    for row, pos in enumerate(out.positions.tolist()):
        tok, size = want[pos]
        assert torch.allclose(out.tokens[row], tok) and int(out.sizes[row]) == size
    assert_mix(out, mix, 7, 25)  # w = max(1 / (n + 1), 0.6) on the context token, from the loop
    assert torch.allclose(out.reduce(x), out.tokens, rtol=0, atol=1e-12)  # rounding-level


def test_fastvid_high_retention_overflow_is_exact():
    # at 90% an anchor frame cannot hold its segment's context share: the excess becomes salient tokens
    x, s = _video(8, 16, seed=2)
    out = methods.get("fastvid")(x, s, config=methods.get("fastvid").config(retention=0.9, segments=1, tau=-1.0))
    check_invariants(out, 8, 16, budget(0.9, 8, 16))
    assert int(out.sizes.sum()) == 8 * 16


# ---- DyCoke --------------------------------------------------------------------------------

def test_dycoke_matches_loop():
    f, n = 7, 16  # a short last group of 3 frames
    x, s = _video(f, n, seed=7, dtype=torch.float64)
    total = budget(0.6, f, n)
    out = methods.get("dycoke")(x, s, config=methods.get("dycoke").config(retention=0.6))
    compared = [t for t in range(f) if t % 4 != 0]
    extra = total - (f - len(compared)) * n
    keep = {t: (j + 1) * extra // len(compared) - j * extra // len(compared) for j, t in enumerate(compared)}
    want = []
    for t in range(f):
        group, pos = t - t % 4, t % 4
        if pos == 0:
            want += [t * n + i for i in range(n)]
            continue
        ref = group if pos in (1, 2) else group + 2
        sim = [_cos(x[t, i], x[ref, i]) for i in range(n)]
        want += sorted(t * n + i for i in sorted(range(n), key=lambda i: (sim[i], i))[:keep[t]])
    assert out.positions.tolist() == want
    assert torch.equal(out.tokens, x.reshape(f * n, -1)[want])
    assert torch.equal(out.dynamic, (out.frames % 4) != 0)
    assert (out.sizes == 1).all() and int((out.assignment >= 0).sum()) == total
    assert_mix(out, {p: {p: 1.0} for p in want}, f, n)  # a selection: weight 1, nothing merged
    assert torch.equal(out.reduce(x), out.tokens)  # exact


def test_dycoke_low_retention_error_names_smallest():
    x, s = _video(32, 196)
    with pytest.raises(ValueError, match=r"use retention >= 0\.25"):
        methods.get("dycoke")(x, s, config=methods.get("dycoke").config(retention=0.2))
    x, s = _video(6, 16)  # 2 reference frames of 6: 1/3
    with pytest.raises(ValueError, match=r"use retention >= 0\.3333"):
        methods.get("dycoke")(x, s, config=methods.get("dycoke").config(retention=0.3))
    out = methods.get("dycoke")(x, s, config=methods.get("dycoke").config(retention=2 / 6))
    assert out.tokens.shape[0] == 32 and set(out.frames.tolist()) == {0, 4}


# ---- pooling and random ------------------------------------------------------------------------

def test_pooling_hand_case_block_means():
    x = torch.arange(16 * 2, dtype=torch.float32).reshape(1, 16, 2) + 1
    out = methods.get("pooling")(x, torch.rand(1, 16), config=methods.get("pooling").config(retention=0.25))
    g = x.reshape(4, 4, 2)
    blocks = [g[r:r + 2, c:c + 2].reshape(4, 2).mean(0) for r in (0, 2) for c in (0, 2)]
    assert torch.equal(out.tokens, torch.stack(blocks))
    assert out.sizes.tolist() == [4, 4, 4, 4] and out.positions.tolist() == [0, 2, 8, 10]
    assert out.assignment.reshape(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_pooling_remainder_rule_hand_case():
    # 5 tokens of a 4x4 grid: the 2x2 blocks, the third (rank floor(0.5 * 4 / 1) = 2) split by rows
    assert pool_cells(4, 4, 5) == ((0, 2, 0, 2), (0, 2, 2, 4), (2, 3, 0, 2), (3, 4, 0, 2), (2, 4, 2, 4))
    x = torch.randn(1, 16, 3, dtype=torch.float64) + 3
    out = methods.get("pooling")(x, torch.rand(1, 16), config=methods.get("pooling").config(retention=5 / 16))
    g = x.reshape(4, 4, 3)
    assert out.positions.tolist() == [0, 2, 8, 10, 12]
    want = [g[0:2, 0:2], g[0:2, 2:4], g[2:3, 0:2], g[2:4, 2:4], g[3:4, 0:2]]
    assert torch.allclose(out.tokens, torch.stack([c.reshape(-1, 3).mean(0) for c in want]))
    assert out.sizes.tolist() == [4, 4, 2, 4, 2]
    cells = [(0, 2, 0, 2), (0, 2, 2, 4), (2, 3, 0, 2), (2, 4, 2, 4), (3, 4, 0, 2)]  # in position order
    mix = {pos: {r * 4 + c: 1 / ((r1 - r0) * (c1 - c0)) for r in range(r0, r1) for c in range(c0, c1)}
           for pos, (r0, r1, c0, c1) in zip([0, 2, 8, 10, 12], cells)}
    assert_mix(out, mix, 1, 16)  # each cell's plain mean
    assert torch.allclose(out.reduce(x), out.tokens, rtol=0, atol=1e-12)  # rounding-level


@pytest.mark.parametrize("h,w", [(14, 14), (13, 13), (4, 6), (27, 27), (3, 10)])
def test_pool_cells_partition_the_grid_for_every_share(h, w):
    for s in range(1, h * w + 1):
        cells = pool_cells(h, w, s)
        assert len(cells) == s
        cover = torch.zeros(h, w, dtype=torch.long)
        for r0, r1, c0, c1 in cells:
            assert r0 < r1 and c0 < c1
            cover[r0:r1, c0:c1] += 1
        assert (cover == 1).all()


def test_random_keeps_exact_tokens_and_seed_matters():
    x, s = _video(4, 49, seed=1)
    method = methods.get("random")
    out = method(x, s, config=method.config(retention=0.2))
    r = budget(0.2, 4, 49)
    assert torch.equal(out.tokens, x.reshape(-1, 8)[out.positions])
    assert (out.sizes == 1).all() and int((out.assignment >= 0).sum()) == r
    assert_mix(out, {p: {p: 1.0} for p in out.positions.tolist()}, 4, 49)
    assert torch.equal(out.reduce(x), out.tokens)  # exact
    same = method(x, s, config=method.config(retention=0.2, seed=0))
    other = method(x, s, config=method.config(retention=0.2, seed=1))
    assert torch.equal(out.positions, same.positions) and not torch.equal(out.positions, other.positions)
    # every token is drawn: over many seeds the kept fraction per position is near retention
    hits = torch.zeros(4 * 49)
    for seed in range(200):
        hits[method(x, s, config=method.config(retention=0.2, seed=seed)).positions] += 1
    assert abs(hits.mean().item() / 200 - r / (4 * 49)) < 1e-6 and hits.min() > 10
