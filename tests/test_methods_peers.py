"""The peers HoliTom and FlashVID: configs, and each against a plain loop.

The contract they share with every comparison method (exact budget, invariants, batch, identity,
validation) is tested once for all in test_methods_contract.py.
"""

import itertools
import math
from fractions import Fraction

import pytest
import torch

import aot.methods as methods
from aot.config import budget
from aot.methods.common import settle
from aot.methods.holitom import holitom_windows
from methods_common import assert_mix, check_invariants, cos, dpc_loop, settle_loop
from methods_common import video as _video


# ---- configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,bad", [
    ("holitom", {"tau": 1.5}), ("holitom", {"beta": -0.1}), ("holitom", {"k": 0}), ("holitom", {"k": 2.0}),
    ("holitom", {"context_share": 1.2}), ("holitom", {"max_window": 0}),
    ("flashvid", {"alpha": 1.1}), ("flashvid", {"temporal_threshold": 2.0}), ("flashvid", {"segments": 0}),
    ("flashvid", {"segment_threshold": float("nan")}), ("flashvid", {"k": True}),
])
def test_config_errors_name_the_field(name, bad):
    field, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=field):
        methods.get(name).config(retention=0.1, **bad)


def test_published_defaults():
    h = methods.get("holitom").config()
    assert (h.retention, h.tau, h.beta, h.k, h.context_share, h.max_window) == (0.1, None, 0.6, 7, 0.0, 1024)
    assert h.threshold == 0.65  # T at 10% retention
    assert methods.get("holitom").config(retention=0.15).threshold == 0.8
    assert methods.get("holitom").config(retention=0.25, tau=0.5).threshold == 0.5
    fl = methods.get("flashvid").config()
    assert (fl.alpha, fl.temporal_threshold, fl.segments, fl.segment_threshold, fl.k) == (0.7, 0.8, 8, 0.9, 7)


# ---- shared helpers ----------------------------------------------------------------------------

def test_settle_hand_cases():
    # ceil of [2.4, 0.3, 0.3] = [3, 1, 1] is 2 too many for 3: both come off part 0 (the only one >= 2, then
    # the one rounded up most... all at 1 then: part 0 has 1 - 2.4 < 0, parts 1, 2 have 0.7: the later goes)
    q = [Fraction(24, 10), Fraction(3, 10), Fraction(3, 10)]
    assert settle(3, q, [3, 1, 1], [5, 5, 5]) == [1, 1, 1]
    assert settle(2, q, [3, 1, 1], [5, 5, 5]) == [1, 1, 0]
    # a shortfall goes to the part furthest below its quota that has room
    assert settle(4, [Fraction(5, 2), Fraction(3, 2)], [2, 1], [3, 3]) == [3, 1]
    assert settle(4, [Fraction(5, 2), Fraction(3, 2)], [2, 1], [2, 3]) == [2, 2]


# ---- HoliTom ---------------------------------------------------------------------------------

def _gain(static, a, b):
    n = len(static[0]) if static else 0
    cells = sum(1 for c in range(n) if all(static[t][c] for t in range(a, b)))
    return cells * (b - a)


def _best_partition(static, f, max_window):
    """Every way to cut f frames into windows of <= max_window: the best total gain and all partitions reaching it."""
    results = []
    for cuts in itertools.product([False, True], repeat=f - 1):
        starts = [0] + [t + 1 for t in range(f - 1) if cuts[t]]
        windows = [(s, e - s) for s, e in zip(starts, starts[1:] + [f])]
        if any(length > max_window for _, length in windows):
            continue
        results.append((sum(_gain(static, s, s + length - 1) for s, length in windows), windows))
    best = max(g for g, _ in results)
    return best, [w for g, w in results if g == best]


def test_holitom_windows_are_optimal_by_brute_force():
    g = torch.Generator().manual_seed(11)
    for trial in range(40):
        f, n = 2 + trial % 6, 1 + trial % 4
        static = torch.rand(f - 1, n, generator=g) < 0.7
        for max_window in (2, 3, 1024):
            windows = holitom_windows(static, max_window)
            rows = static.tolist()
            assert sum(length for _, length in windows) == f and windows[0][0] == 0
            assert all(s + length == s2 for (s, length), (s2, _) in zip(windows, windows[1:]))
            assert all(length <= max_window for _, length in windows)
            best, _ = _best_partition(rows, f, max_window)
            assert sum(_gain(rows, s, s + length - 1) for s, length in windows) == best
    # ties go to the shorter window: nothing static, every frame alone
    assert holitom_windows(torch.zeros(3, 2, dtype=torch.bool), 8) == [(0, 1), (1, 1), (2, 1), (3, 1)]


def _holitom_loop(x, s, total, tau, beta, k, share, max_window, mix=None):
    """{position: (token, size)}; ``mix`` (a dict) gets {position: {flat input: weight}}."""
    f, n, d = x.shape
    mix = {} if mix is None else mix
    static = [[cos(x[t, c], x[t + 1, c]) > tau for c in range(n)] for t in range(f - 1)]
    _, optimal = _best_partition(static, f, max_window)
    assert len(optimal) == 1, "test data must have a unique best segmentation"
    windows = optimal[0]
    pools = []
    for s0, length in windows:
        cells = [c for c in range(n) if length > 1 and all(static[t][c] for t in range(s0, s0 + length - 1))]
        if cells:
            pools.append(("static", s0, length, cells))
        for t in range(s0, s0 + length):
            pools.append(("dynamic", t, 1, [c for c in range(n) if c not in cells]))
    left = sum(len(p[3]) for p in pools)
    assert total <= left, "this loop covers the budget-below-P case"
    quotas = [Fraction(total * len(p[3]), left) for p in pools]
    rounded = [math.ceil(q) if p[0] == "dynamic" else math.floor(q + Fraction(1, 2)) for p, q in zip(pools, quotas)]
    counts = settle_loop(total, quotas, rounded, [len(p[3]) for p in pools])
    out = {}  # flat position -> (token, size)
    for (kind, t0, length, cells), c in zip(pools, counts):
        if c == 0:
            continue
        if kind == "static":
            means = [sum(x[t, cell] for t in range(t0, t0 + length)) / length for cell in cells]
            centres, owner = dpc_loop(means, c, min(k, c))
            for j in centres:
                idx = [a for a in range(len(cells)) if owner[a] == j and a != j]
                members = [means[a] for a in idx]
                tok = beta * means[j] + (1 - beta) * sum(members) / len(members) if members else means[j]
                out[t0 * n + cells[j]] = (tok, length * (1 + len(members)))
                # a mean over the window's frames, then the beta merge
                wts = {cells[j]: beta if idx else 1.0, **{cells[a]: (1 - beta) / len(idx) for a in idx}}
                mix[t0 * n + cells[j]] = {t * n + cell: w / length for cell, w in wts.items()
                                          for t in range(t0, t0 + length)}
            continue
        n_dom = min(c, math.floor(c * (1 - share) + 0.5))
        ranked = sorted(cells, key=lambda cell: (-float(s[t0, cell]), cell))
        for cell in ranked[:n_dom]:
            out[t0 * n + cell] = (x[t0, cell], 1)
            mix[t0 * n + cell] = {t0 * n + cell: 1.0}
        if c > n_dom:
            rest = sorted(ranked[n_dom:])
            centres, owner = dpc_loop([x[t0, cell] for cell in rest], c - n_dom, min(k, c - n_dom))
            for j in centres:
                idx = [a for a in range(len(rest)) if owner[a] == j and a != j]
                members = [x[t0, rest[a]] for a in idx]
                tok = beta * x[t0, rest[j]] + (1 - beta) * sum(members) / len(members) if members else x[t0, rest[j]]
                out[t0 * n + rest[j]] = (tok, 1 + len(members))
                mix[t0 * n + rest[j]] = {t0 * n + rest[j]: beta if idx else 1.0,
                                         **{t0 * n + rest[a]: (1 - beta) / len(idx) for a in idx}}
    return out


def _holitom_data(seed=4):
    """7 frames x 16 cells: half the cells still over frames 0-3, most still over 4-6, the rest moving."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 16, 4, generator=g, dtype=torch.float64)
    x[1:4, :8] = x[0, :8] + 0.05 * torch.randn(3, 8, 4, generator=g, dtype=torch.float64)
    x[5:7, 2:14] = x[4, 2:14] + 0.05 * torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
    return x, torch.rand(7, 16, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("retention,tau,share,max_window,k", [
    (0.1, None, 0.0, 1024, 7), (0.2, 0.8, 0.0, 1024, 7), (0.3, 0.8, 0.5, 1024, 3),
    (0.25, 0.6, 0.25, 3, 7), (0.45, 0.9, 1.0, 1024, 2),
])
def test_holitom_matches_loop(retention, tau, share, max_window, k):
    x, s = _holitom_data()
    method = methods.get("holitom")
    config = method.config(retention=retention, tau=tau, context_share=share, max_window=max_window, k=k)
    out = method(x, s, config=config)
    mix = {}
    want = _holitom_loop(x, s, budget(retention, 7, 16), config.threshold, 0.6, k, share, max_window, mix)
    assert out.positions.tolist() == sorted(want)
    for row, pos in enumerate(out.positions.tolist()):
        tok, size = want[pos]
        assert torch.allclose(out.tokens[row], tok) and int(out.sizes[row]) == size
    assert_mix(out, mix, 7, 16)  # window means, then beta merges of those means: composed weights from the loop
    assert torch.allclose(out.reduce(x), out.tokens, rtol=0, atol=1e-12)  # rounding-level
    # the loop's windows really merged something: static tokens sit at a window's first frame
    assert (~out.dynamic).any() and out.dynamic.any()


def test_holitom_budget_above_what_temporal_merging_leaves_splits_static_cells():
    # a still video: one window of 4 frames, every cell static, P = 16 tokens; 50% asks for 32
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, 6, generator=g, dtype=torch.float64)
    x = base + 0.01 * torch.randn(4, 16, 6, generator=g, dtype=torch.float64)
    s = torch.rand(4, 16, generator=g, dtype=torch.float64)
    method = methods.get("holitom")
    out = method(x, s, config=method.config(retention=0.5))
    assert out.positions.tolist() == sorted([c for c in range(16)] + [2 * 16 + c for c in range(16)])
    want = torch.cat([x[0:2].mean(0), x[2:4].mean(0)])  # each cell: frames 0-1 and 2-3
    assert torch.allclose(out.tokens, want) and (out.sizes == 2).all() and not out.dynamic.any()
    assert_mix(out, {t * 16 + c: {t * 16 + c: 0.5, (t + 1) * 16 + c: 0.5} for t in (0, 2) for c in range(16)}, 4, 16)
    # 40% asks for 26 = 16 + 10: 10 of the 16 cells get a second run, spread evenly over the cells
    out = method(x, s, config=method.config(retention=0.4))
    split = out.positions[out.frames == 2] - 32
    assert split.tolist() == [c for c in range(16) if (c + 1) * 10 // 16 > c * 10 // 16]
    assert int(out.sizes.sum()) == 64
    # at 10% (T = 0.65) the 16 static means are clustered into 6 DPC-kNN clusters on frame 0
    out = method(x, s, config=method.config(retention=0.1))
    assert out.tokens.shape[0] == 6 and (out.frames == 0).all() and int(out.sizes.sum()) == 64


# ---- FlashVID --------------------------------------------------------------------------------

def _flashvid_segments_loop(x, c, threshold):
    """FlashVID's own DySeg: cuts below the threshold, then the least similar other pairs up to c segments."""
    f = x.shape[0]
    g = [x[t].mean(0) for t in range(f)]
    sims = [cos(g[t], g[t + 1]) for t in range(f - 1)]
    cuts = [t for t in range(f - 1) if sims[t] < threshold]
    others = sorted((t for t in range(f - 1) if t not in cuts), key=lambda t: (sims[t], t))
    cuts = sorted(cuts + others[:max(0, min(c, f) - 1 - len(cuts))])
    starts = [0] + [t + 1 for t in cuts]
    return [list(range(a, b)) for a, b in zip(starts, starts[1:] + [f])]


def _adts_loop(x, s, frames, t, k):
    n = x.shape[1]
    event = sum(x[u, i] for u in frames for i in range(n)) / (len(frames) * n)
    w = [float(s[t, j]) * float(x[t, j] @ event) for j in range(n)]
    dist = [[(1 - cos(x[t, i], x[t, j])) * w[j] for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda j: (min([dist[i][j] for i in range(n) if i != j] or [math.inf]), -j))
    picked = [first]
    while len(picked) < k:
        picked.append(max((j for j in range(n) if j not in picked),
                          key=lambda j: (min(dist[i][j] for i in picked), -j)))
    return picked[:k]


def _flashvid_loop(x, s, total, alpha, threshold, c, seg_threshold, k, mix=None):
    """{position: (token, size)}; ``mix`` (a dict) gets {position: {flat input: weight}}."""
    f, n, d = x.shape
    mix = {} if mix is None else mix
    shares = [(t + 1) * total // f - t * total // f for t in range(f)]
    n_adts = [math.ceil(Fraction(str(alpha)) * sh) for sh in shares]
    out = {}
    for frames in _flashvid_segments_loop(x, c, seg_threshold):
        free = {}
        for t in frames:
            picked = _adts_loop(x, s, frames, t, n_adts[t])
            for i in picked:
                out[t * n + i] = (x[t, i], 1)
                mix[t * n + i] = {t * n + i: 1.0}
            free[t] = [i for i in range(n) if i not in picked]
        m = sum(shares[t] - n_adts[t] for t in frames)
        if m == 0:
            continue
        # TSTM: best free match in the previous frame
        links = []  # (cosine, t, i, parent cell)
        for t in frames[1:]:
            for i in free[t]:
                if free[t - 1]:
                    p = max(free[t - 1], key=lambda j: (cos(x[t, i], x[t - 1, j]), -j))
                    links.append((cos(x[t, i], x[t - 1, p]), t, i, p))
        n_free = sum(len(v) for v in free.values())
        above = [lk for lk in links if lk[0] > threshold]
        chosen = sorted(above, key=lambda lk: (-lk[0], lk[1], lk[2]))[:n_free - m]
        parent = {(t, i): (t - 1, p) for _, t, i, p in chosen}
        root = {}
        for t in frames:
            for i in free[t]:
                root[(t, i)] = root[parent[(t, i)]] if (t, i) in parent else (t, i)
        trees = {}
        for tok, r in root.items():
            trees.setdefault(r, []).append(tok)
        means = {r: sum(x[u, i] for u, i in toks) / len(toks) for r, toks in trees.items()}
        per_frame = [sorted(i for (u, i) in trees if u == t) for t in frames]
        n_roots = sum(len(p) for p in per_frame)
        quotas = [Fraction(m * len(p), n_roots) for p in per_frame]
        counts = settle_loop(m, quotas, [math.ceil(q) for q in quotas], [len(p) for p in per_frame])
        for t, cells, cnt in zip(frames, per_frame, counts):
            if cnt == 0:
                continue
            feats = [means[(t, i)] for i in cells]
            if cnt == len(cells):
                for i in cells:
                    out[t * n + i] = (means[(t, i)], len(trees[(t, i)]))
                    tree = trees[(t, i)]
                    mix[t * n + i] = {u * n + v: 1 / len(tree) for u, v in tree}
                continue
            centres, owner = dpc_loop(feats, cnt, min(k, cnt))
            for j in centres:
                members = [a for a in range(len(cells)) if owner[a] == j]
                out[t * n + cells[j]] = (sum(feats[a] for a in members) / len(members),
                                         sum(len(trees[(t, cells[a])]) for a in members))
                # a plain mean of tree means: a merge of merges
                mix[t * n + cells[j]] = {u * n + v: 1 / (len(members) * len(trees[(t, cells[a])]))
                                         for a in members for u, v in trees[(t, cells[a])]}
    return out


@pytest.mark.parametrize("retention,alpha,threshold,segments,seg_threshold", [
    (0.25, 0.7, 0.8, 8, 0.9), (0.25, 0.7, 0.8, 2, -1.0), (0.15, 0.7, 0.5, 3, 0.2),
    (0.4, 0.5, 0.9, 1, -1.0), (0.1, 0.7, 0.8, 2, -1.0), (0.3, 0.0, 0.8, 2, 0.5),
])
def test_flashvid_matches_loop(retention, alpha, threshold, segments, seg_threshold):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 16, 4, generator=g, dtype=torch.float64)
    x[1:] = 0.7 * x[:-1] + 0.3 * x[1:]  # tokens drift frame to frame, so links form above and below 0.8
    x[4:] += 1.0  # a scene change
    s = torch.rand(6, 16, generator=g, dtype=torch.float64)
    method = methods.get("flashvid")
    config = method.config(retention=retention, alpha=alpha, temporal_threshold=threshold,
                           segments=segments, segment_threshold=seg_threshold)
    out = method(x, s, config=config)
    mix = {}
    want = _flashvid_loop(x, s, budget(retention, 6, 16), alpha, threshold, segments, seg_threshold, 7, mix)
    assert out.positions.tolist() == sorted(want)
    for row, pos in enumerate(out.positions.tolist()):
        tok, size = want[pos]
        assert torch.allclose(out.tokens[row], tok) and int(out.sizes[row]) == size
    assert_mix(out, mix, 6, 16)  # tree means, then DPC-kNN cluster means of those: composed weights from the loop
    assert torch.allclose(out.reduce(x), out.tokens, rtol=0, atol=1e-12)  # rounding-level


def test_flashvid_segments_equal_fastvid_dyseg():
    from aot.methods.fastvid import fastvid_segments
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        f = 2 + seed % 12
        x = torch.randn(f, 4, 3, generator=g, dtype=torch.float64) + torch.randn(f, 1, 3, generator=g, dtype=torch.float64)
        for c, thr in ((8, 0.9), (3, 0.0), (1, 0.5), (20, -1.0)):
            got = [list(range(a, a + length)) for a, length in fastvid_segments(x, c, thr)]
            assert got == _flashvid_segments_loop(x, c, thr)


def test_flashvid_still_video_merges_across_frames_into_first_frame_trees():
    # a still segment: every ADTS-free token links to its own cell in the previous frame, so at most the
    # merge budget of roots survives and the merged tokens stand for several frames each
    x, s = _video(4, 16, d=6, seed=3, dtype=torch.float64, still=0.97)
    method = methods.get("flashvid")
    out = method(x, s, config=method.config(retention=0.25, segments=1, segment_threshold=-1.0))
    check_invariants(out, 4, 16, 16)
    assert int(out.sizes.sum()) == 64 and int(out.sizes.max()) >= 4
