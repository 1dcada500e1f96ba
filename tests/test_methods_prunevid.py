"""PruneVid's pre-LLM stage: exact budgets, a plain-loop reimplementation, still videos, errors."""

import math
from fractions import Fraction

import pytest
import torch

import aot.methods as methods
from aot.config import budget
from aot.methods.prunevid import contiguous_labels, prunevid_segments
from methods_common import assert_mix, check_invariants, cos, dpc_loop, settle_loop
from methods_common import video as _video

METHOD = methods.get("prunevid")


# ---- exact budget -----------------------------------------------------------------------------

@pytest.mark.parametrize("still", [0.0, 0.9, 1.0])
def test_every_budget_is_exact(still):
    """Every budget R = 1 .. F * N (retention R / (F * N)) comes out exactly, with the invariants."""
    f, n = 6, 9
    x, s = _video(f, n, seed=3, still=still)
    for r in range(1, f * n + 1):
        retention = r / (f * n)
        assert budget(retention, f, n) == r
        out = METHOD(x, s, config=METHOD.config(retention=retention))
        check_invariants(out, f, n, r)
        assert out.tokens.dtype == x.dtype
        if r >= f:  # at least one token per pool here: nothing dropped
            assert int(out.sizes.sum()) == f * n


def test_exact_budget_over_shapes_and_retentions():
    for f in (1, 2, 3, 8, 16):
        for n in (16, 49):
            for still in (0.0, 0.95):
                x, s = _video(f, n, seed=f + n, still=still)
                for retention in (0.01, 0.03, 0.1, 0.15, 0.2, 0.25, 0.6, 0.99):
                    r = budget(retention, f, n)
                    if r == 0:
                        continue
                    METHOD.check(METHOD.config(retention=retention), f, n)
                    check_invariants(METHOD(x, s, config=METHOD.config(retention=retention)), f, n, r)


def test_deterministic_batch_equals_loop_identity_and_dtype():
    config = METHOD.config(retention=0.3)
    xs, ss = zip(*(_video(8, 36, seed=i, still=0.5 * (i % 2)) for i in range(3)))
    x, s = torch.stack(xs), torch.stack(ss)
    batch = METHOD(x, s, config=config)
    again = METHOD(x, s, config=config)
    for field, other in zip(batch[:6] + tuple(batch.mix), again[:6] + tuple(again.mix)):
        assert torch.equal(field, other)
    for i in range(3):
        one = METHOD(xs[i], ss[i], config=config)
        for field, stacked in zip(one[:6], batch[:6]):
            assert torch.equal(field, stacked[i])
        e = one.mix.rows.numel()  # the batch pads each video's mix with weight-0 entries
        for field, stacked in zip(one.mix, batch.mix):
            assert torch.equal(field, stacked[i, :e])
    x, s = _video(4, 16, dtype=torch.bfloat16)
    out = METHOD(x, s, config=METHOD.config(retention=1.0))
    assert torch.equal(out.tokens, x.reshape(64, -1)) and torch.equal(out.sizes, torch.ones(64, dtype=torch.long))
    out = METHOD(x, s, config=METHOD.config(retention=0.5))
    assert out.tokens.dtype == torch.bfloat16 and out.tokens.shape[0] == 32


def test_scores_are_not_used():
    x, s = _video(8, 16, seed=5, still=0.6)
    a = METHOD(x, s, config=METHOD.config(retention=0.2))
    b = METHOD(x, torch.rand(8, 16), config=METHOD.config(retention=0.2))
    for field, other in zip(a[:6] + tuple(a.mix), b[:6] + tuple(b.mix)):
        assert torch.equal(field, other)


# ---- errors -------------------------------------------------------------------------------------

def test_infeasible_budget_is_named_before_and_during_the_run():
    x, s = _video(2, 16)
    msg = r"retention=0.001 keeps 0 of 32 tokens \(F=2, N=16\); use retention >= 0\.03125"
    with pytest.raises(ValueError, match=msg):
        METHOD.check(METHOD.config(retention=0.001), 2, 16)
    with pytest.raises(ValueError, match=msg):
        METHOD(x, s, config=METHOD.config(retention=0.001))
    METHOD.check(METHOD.config(retention=0.03125), 2, 16)  # one token is enough
    assert METHOD(x, s, config=METHOD.config(retention=0.03125)).tokens.shape[0] == 1


@pytest.mark.parametrize("field,value", [
    ("retention", 0.0), ("retention", 1.5), ("tau", 1.5), ("tau", float("nan")), ("segment_ratio", -0.1),
    ("segment_ratio", 1.1), ("k", 0), ("k", 2.0), ("k", True),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        METHOD.config(**{"retention": 0.1, field: value})


def test_validation_matches_compress():
    x, s = _video(2, 16)
    bad = x.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        METHOD(bad, s)
    with pytest.raises(ValueError, match="scores must have shape"):
        METHOD(x, s[:, :4])
    with pytest.raises(TypeError, match="takes a"):
        METHOD(x, s, config=methods.get("holitom").config())


def test_published_defaults():
    c = METHOD.config()
    assert (c.retention, c.tau, c.segment_ratio, c.k) == (0.1, 0.8, 0.25, 7)
    assert METHOD.stage == "pre-llm" and METHOD.exact_budget


# ---- plain-loop reimplementation -----------------------------------------------------------

def _runs(labels):
    """Maximal runs of equal values: (value, first, last)."""
    out = []
    for t, v in enumerate(labels):
        if out and out[-1][0] == v and out[-1][2] == t - 1:
            out[-1][2] = t
        else:
            out.append([v, t, t])
    return out


def _refine_loop(labels):
    labels = list(labels)
    keep = [False] * len(labels)
    for v in set(labels):
        spans = [(a, b) for w, a, b in _runs(labels) if w == v]
        longest = max(b - a + 1 for a, b in spans)
        for a, b in spans:
            if longest > 1 and b - a + 1 == longest:
                for t in range(a, b + 1):
                    keep[t] = True
    out = [v if k else "?" for v, k in zip(labels, keep)]
    t = 0
    while t < len(out):
        if out[t] != "?":
            t += 1
            continue
        runs = _runs(out)
        i = next(i for i, (v, a, b) in enumerate(runs) if a == t)
        _, a, b = runs[i]
        left = runs[i - 1] if i > 0 else None
        right = runs[i + 1] if i + 1 < len(runs) else None
        size = lambda r: 0 if r is None else r[2] - r[1] + 1  # noqa: E731
        if left is None and right is None:
            new = 0
        elif size(right) > size(left):
            new = right[0]
        else:
            new = left[0] if left is not None else right[0]
        for u in range(a, b + 1):
            out[u] = new
        t = b + 1
    return out


def _segments_loop(x, ratio, k):
    f = x.shape[0]
    feats = [x[t].mean(0) for t in range(f)]
    centres, owner = dpc_loop(feats, max(1, int(f * ratio)), k)
    labels = _refine_loop([centres.index(o) for o in owner])
    return [list(range(a, b + 1)) for _, a, b in _runs(labels)]


def _prunevid_loop(x, total, tau, ratio, k, mix=None):
    """PruneVid's pre-LLM stage by hand: {flat position: (token, size, dynamic)}; ``mix`` (a dict) gets
    {flat position: {flat input: weight}}."""
    f, n, d = x.shape
    mix = {} if mix is None else mix
    pools = []  # (kind, frames, cells)
    for frames in _segments_loop(x, ratio, k):
        w = len(frames)
        static = []
        for c in range(n):
            pairs = [cos(x[i, c], x[j, c]) for i in frames for j in frames if i != j]
            if pairs and sum(pairs) / len(pairs) > tau:
                static.append(c)
        if static:
            pools.append(("static", frames, static))
        for t in frames:
            pools.append(("dynamic", [t], [c for c in range(n) if c not in static]))
    left = sum(len(p[2]) for p in pools)
    out = {}
    if total > left:  # every pool whole, static cells split into runs of frames
        static_cells = [(frames, c) for kind, frames, cells in pools if kind == "static" for c in cells]
        extra, more = [0] * len(static_cells), total - left
        while more:  # water filling, one round at a time, caps len(frames) - 1
            open_ = [i for i, (fr, _) in enumerate(static_cells) if extra[i] < len(fr) - 1]
            shares = [(j + 1) * more // len(open_) - j * more // len(open_) for j in range(len(open_))]
            for i, sh in zip(open_, shares):
                take = min(sh, len(static_cells[i][0]) - 1 - extra[i])
                extra[i] += take
                more -= take
        for kind, frames, cells in pools:
            if kind == "dynamic":
                for c in cells:
                    out[frames[0] * n + c] = (x[frames[0], c], 1, True)
                    mix[frames[0] * n + c] = {frames[0] * n + c: 1.0}
        for (frames, c), e in zip(static_cells, extra):
            parts, w = e + 1, len(frames)
            lengths = [(j + 1) * w // parts - j * w // parts for j in range(parts)]
            start = 0
            for length in lengths:
                run = frames[start:start + length]
                out[run[0] * n + c] = (sum(x[t, c] for t in run) / length, length, False)
                mix[run[0] * n + c] = {t * n + c: 1 / length for t in run}
                start += length
        return out
    quotas = [Fraction(total * len(p[2]), left) for p in pools]
    counts = settle_loop(total, quotas, [math.floor(q) for q in quotas], [len(p[2]) for p in pools])
    for (kind, frames, cells), cnt in zip(pools, counts):
        if cnt == 0:
            continue
        feats = [sum(x[t, c] for t in frames) / len(frames) for c in cells]
        centres, owner = dpc_loop(feats, cnt, k)
        for j in centres:
            members = [a for a in range(len(cells)) if owner[a] == j]
            out[frames[0] * n + cells[j]] = (sum(feats[a] for a in members) / len(members),
                                             len(members) * len(frames), kind == "dynamic")
            # a mean over the segment's frames, then the cluster's plain mean: a merge of merges
            mix[frames[0] * n + cells[j]] = {t * n + cells[a]: 1 / (len(members) * len(frames))
                                             for a in members for t in frames}
    return out


def _scenes(seed=4):
    """10 frames x 16 cells in three scenes (0-2, 3-6, 7-9); in each, some cells still and the rest moving."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 16, 4, generator=g, dtype=torch.float64)
    for a, b, still in ((0, 3, range(0, 9)), (3, 7, range(4, 16)), (7, 10, range(2, 7))):
        base = torch.randn(16, 4, generator=g, dtype=torch.float64) * 0.5 + 2.0 * torch.randn(1, 4, generator=g, dtype=torch.float64)
        x[a:b] = base + 0.6 * torch.randn(b - a, 16, 4, generator=g, dtype=torch.float64)
        x[a:b, list(still)] = base[list(still)] + 0.05 * torch.randn(b - a, len(still), 4, generator=g, dtype=torch.float64)
    return x, torch.rand(10, 16, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("retention,tau,ratio,k", [
    (0.1, 0.8, 0.25, 7), (0.2, 0.8, 0.25, 7), (0.05, 0.8, 0.3, 3), (0.3, 0.5, 0.25, 7),
    (0.15, 0.95, 0.5, 2), (0.02, 0.8, 0.25, 7), (0.6, 0.8, 0.25, 7), (0.9, 0.5, 0.3, 4),
])
def test_matches_loop(retention, tau, ratio, k):
    x, s = _scenes()
    config = METHOD.config(retention=retention, tau=tau, segment_ratio=ratio, k=k)
    out = METHOD(x, s, config=config)
    mix = {}
    want = _prunevid_loop(x, budget(retention, 10, 16), tau, ratio, k, mix)
    assert out.positions.tolist() == sorted(want)
    for row, pos in enumerate(out.positions.tolist()):
        tok, size, dyn = want[pos]
        assert torch.allclose(out.tokens[row], tok) and int(out.sizes[row]) == size and bool(out.dynamic[row]) == dyn
    assert_mix(out, mix, 10, 16)
    assert torch.allclose(out.reduce(x), out.tokens, rtol=0, atol=1e-12)  # rounding-level


def test_loop_data_has_segments_static_and_dynamic_cells():
    x, _ = _scenes()
    assert [list(range(a, a + length)) for a, length in prunevid_segments(x, 0.25, 7)] == _segments_loop(x, 0.25, 7)
    assert len(_segments_loop(x, 0.25, 7)) >= 2
    out = METHOD(x, torch.rand(10, 16), config=METHOD.config(retention=0.2))
    assert out.dynamic.any() and (~out.dynamic).any()


def test_segments_match_loop_on_random_videos():
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        f = 1 + seed % 17
        scene = torch.randint(0, 3, (f,), generator=g)
        x = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)[scene] + 0.5 * torch.randn(f, 5, 4, generator=g, dtype=torch.float64)
        for ratio, k in ((0.25, 7), (0.5, 2), (1.0, 3)):
            got = [list(range(a, a + length)) for a, length in prunevid_segments(x, ratio, k)]
            assert got == _segments_loop(x, ratio, k), (seed, ratio, k)


def test_label_refinement_hand_cases():
    assert contiguous_labels([0, 0, 1, 0, 0, 0, 2, 2]) == [0] * 6 + [2, 2]  # short runs join the longer neighbour
    assert contiguous_labels([0, 1, 0, 1, 2, 2, 3]) == [2] * 7  # only 2 has a run longer than one frame
    assert contiguous_labels([1, 1, 0, 2, 2]) == [1, 1, 1, 2, 2]  # equal neighbours: the left one
    assert contiguous_labels([0, 0, 1, 1, 1, 0, 0]) == [0, 0, 1, 1, 1, 0, 0]  # equally longest runs both stay
    assert contiguous_labels([3, 1, 2]) == [0, 0, 0]  # no label survives: one segment
    for labels in ([0, 0, 1, 0, 0, 0, 2, 2], [0, 1, 0, 1, 2, 2, 3], [1, 1, 0, 2, 2], [2, 0, 2, 1, 1, 0, 0, 0, 1]):
        assert contiguous_labels(labels) == _refine_loop(labels)


# ---- a still video --------------------------------------------------------------------------

@pytest.mark.parametrize("f,n,retention", [(8, 16, 0.1), (16, 49, 0.05), (4, 9, 0.25), (6, 25, 0.1)])
def test_still_video_is_spatial_clustering_of_one_frame(f, n, retention):
    """A constant video is one segment, every cell static: the output is DPC-kNN clustering of the frame."""
    g = torch.Generator().manual_seed(f * n)
    frame = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x = frame.expand(f, n, 6).clone()
    s = torch.rand(f, n, generator=g, dtype=torch.float64)
    r = budget(retention, f, n)
    assert r <= n
    out = METHOD(x, s, config=METHOD.config(retention=retention))
    assert prunevid_segments(x, 0.25, 7) == [(0, f)]
    centres, owner = dpc_loop(list(frame), r, 7)
    assert out.positions.tolist() == centres and (out.frames == 0).all() and not out.dynamic.any()
    for row, j in enumerate(centres):
        members = [a for a in range(n) if owner[a] == j]
        assert torch.allclose(out.tokens[row], sum(frame[a] for a in members) / len(members))
        assert int(out.sizes[row]) == f * len(members)
    # every input token belongs to its cell's cluster
    assert out.assignment.tolist() == [centres.index(owner[c]) for _ in range(f) for c in range(n)]


def test_still_video_above_one_frame_of_budget_splits_cells_into_runs():
    """Budget above N for a still video: all N static cells kept, the extra tokens split cells into frame runs."""
    g = torch.Generator().manual_seed(0)
    frame = torch.randn(16, 6, generator=g, dtype=torch.float64)
    x = frame.expand(4, 16, 6).clone()
    out = METHOD(x, torch.rand(4, 16, dtype=torch.float64), config=METHOD.config(retention=0.5))  # 32 = 16 + 16
    assert out.positions.tolist() == list(range(16)) + [32 + c for c in range(16)]
    assert (out.sizes == 2).all() and torch.allclose(out.tokens, torch.cat([frame, frame]))
