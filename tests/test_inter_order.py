"""The merge pass on irregular clip layouts (uneven clips, dynamic clips) reads its per-frame inputs
in one position-major order instead of gathering them at every Eq. 16 step: the same arithmetic on
every problem, so every output must equal the previous implementation BIT FOR BIT. The oracle is a
frozen copy of aggregate_inter as it was before the change (tests/inter_before.py, commit d8ff83d).
"""

import collections
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import aot
import aot.ot
import aot.temporal
from aot.temporal import aggregate_inter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inter_before import aggregate_inter_before  # noqa: E402

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "launches.py"
_spec = importlib.util.spec_from_file_location("launches", _PATH)
launches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launches)

_COMPRESS = sys.modules["aot.compress"]

UNIFORM = [(0, 13), (13, 13), (26, 6)]  # today's default clips of a 32-frame video at 10%
DYNAMIC = [(0, 3), (3, 5), (8, 2), (10, 6), (16, 1), (17, 4)]  # every length different, one single frame


def _same(new, old):
    for name, a, b in zip(new._fields, new, old):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs: max {(a.double() - b.double()).abs().max()}"


def _inputs(clips, videos, m, d, seed, dtype=torch.float32, static=()):
    """tokens (V F, M, d) that drift frame to frame, sizes, and valid with per-clip anchor counts
    (padding slots, as compress makes them). Videos in ``static`` barely move (their plans converge
    at the first stop check, the others later)."""
    g = torch.Generator().manual_seed(seed)
    f = sum(n for _, n in clips)
    x = torch.randn(videos, 1, m, d, generator=g) + 0.6 * torch.randn(videos, f, m, d, generator=g).cumsum(1)
    for v in static:
        x[v] = x[v, :1] + 1e-3 * torch.randn(f, m, d, generator=g)
    counts = torch.randint(m - 2, m + 1, (len(clips),), generator=g)
    per_frame = torch.cat([counts[c].repeat(n) for c, (_, n) in enumerate(clips)]).repeat(videos)
    valid = torch.arange(m) < per_frame.unsqueeze(1)
    sizes = torch.randint(1, 5, (videos * f, m), generator=g) * valid
    return x.reshape(videos * f, m, d).to(dtype), sizes, valid


OPTIONS = [dict(), dict(guard=True), dict(keep_ref="previous"), dict(keep_ref="previous", guard=True),
           dict(merge="cosine"), dict(merge="cosine", guard=True), dict(merge="none"), dict(keep_by="plan"),
           dict(keep_by="plan", guard=True), dict(lam=0.5, guard=True), dict(tol=None, n_iters=30)]


@pytest.mark.parametrize("clips", [UNIFORM, DYNAMIC], ids=["13-13-6", "dynamic"])
@pytest.mark.parametrize("videos", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_merge_pass_equals_the_previous_code_bit_for_bit(clips, videos, dtype, opts):
    x, sizes, valid = _inputs(clips, videos, 9, 12, seed=len(clips) * 10 + videos, dtype=dtype)
    n_keep = 11
    kw = dict(reg=0.1, n_iters=100, tol=1e-3, videos=videos) | opts
    _same(aggregate_inter(x, sizes, clips, n_keep, valid, **kw), aggregate_inter_before(x, sizes, clips, n_keep, valid, **kw))


def test_no_keep_and_no_valid_equal_the_previous_code():
    x, sizes, _ = _inputs(DYNAMIC, 2, 6, 8, seed=5)
    for opts in (dict(), dict(merge="none"), dict(merge="cosine")):
        kw = dict(reg=0.1, n_iters=50, tol=1e-3, videos=2) | opts
        _same(aggregate_inter(x, sizes, DYNAMIC, 0, **kw), aggregate_inter_before(x, sizes, DYNAMIC, 0, **kw))


def test_gradients_equal_the_previous_code():
    """With a graph the anchor updates run out of place: the same outputs bit for bit; the gradients
    to float rounding (backward adds the contributions of a frame's rows in another order: the old
    code scattered each step's gather back, the new one slices one position-major gather)."""
    x, sizes, valid = _inputs(DYNAMIC, 2, 7, 8, seed=9)
    grads = []
    for fn in (aggregate_inter, aggregate_inter_before):
        t = x.clone().requires_grad_(True)
        out = fn(t, sizes, DYNAMIC, 8, valid, reg=0.1, n_iters=40, tol=1e-3, guard=True, videos=2)
        (out.anchors * torch.linspace(-1, 1, out.anchors.numel()).view_as(out.anchors)).sum().backward()
        grads.append((out._replace(anchors=out.anchors.detach()), t.grad))
    _same(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert grads[0][1].abs().sum() > 0


def _stop_iterations(monkeypatch, fn):
    """Run fn() and return, for every merge-pass Sinkhorn call with several stop groups, the
    iteration each group stops at (found by re-solving the group alone with growing caps: a group
    stopped at iteration k returns what k iterations without a check return)."""
    calls, solve = [], aot.temporal.sinkhorn_

    def spy(cost, reg, n_iters, a, b, tol, *args, blocks=0, **kw):
        if blocks > 1 and tol is not None:
            calls.append((cost.clone(), reg, n_iters, a.clone(), b.clone(), tol, blocks, kw))
        return solve(cost, reg, n_iters, a, b, tol, *args, blocks=blocks, **kw)
    monkeypatch.setattr(aot.temporal, "sinkhorn_", spy)
    fn()
    monkeypatch.undo()
    stops = []
    for cost, reg, n_iters, a, b, tol, blocks, kw in calls:
        per = []
        for c, aa, bb in zip(*(t.chunk(blocks) for t in (cost, a, b))):
            full = solve(c.clone(), reg, n_iters, aa, bb, tol, **kw)
            per.append(next(k for k in range(10, n_iters + 1, 10)
                            if torch.equal(solve(c.clone(), reg, k, aa, bb, None, **kw), full)))
        stops.append(per)
    return stops


@pytest.mark.parametrize("clips", [UNIFORM, DYNAMIC], ids=["13-13-6", "dynamic"])
def test_batch_of_three_with_stop_groups_that_stop_at_different_checks(monkeypatch, clips):
    """Video 1 barely moves (its plans converge at the first check), videos 0 and 2 later: each
    video's stop group stays its own, so the batch equals the previous code and each video equals
    its own call, bit for bit."""
    x, sizes, valid = _inputs(clips, 3, 8, 12, seed=3, static=(1,))
    kw = dict(reg=0.05, n_iters=200, tol=1e-5, guard=True)
    n_keep = 9
    run = lambda: aggregate_inter(x, sizes, clips, n_keep, valid, videos=3, **kw)  # noqa: E731
    stops = _stop_iterations(monkeypatch, run)
    assert any(len(set(s)) > 1 for s in stops), stops  # some call's groups stop at different checks
    new = run()
    _same(new, aggregate_inter_before(x, sizes, clips, n_keep, valid, videos=3, **kw))
    f = sum(n for _, n in clips)
    for v in range(3):
        rows = slice(v * f, (v + 1) * f)
        alone = aggregate_inter(x[rows], sizes[rows], clips, n_keep, valid[rows], **kw)
        c = len(clips)
        _same(alone, aot.temporal.InterResult(new.anchors[v * c:(v + 1) * c], new.anchor_sizes[v * c:(v + 1) * c],
                                              *(t[rows] for t in new[2:])))


def _both(x, s, cfg, monkeypatch):
    """compress with the new merge pass and with the previous aggregate_inter patched in."""
    new = aot.compress(x, s, config=cfg)
    monkeypatch.setattr(_COMPRESS, "aggregate_inter", aggregate_inter_before)
    old = aot.compress(x, s, config=cfg)
    monkeypatch.undo()
    return new, old


def _video(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    *lead, f, n, d = shape
    x = torch.randn(*lead, 1, n, d, generator=g) + 0.5 * torch.randn(*shape, generator=g).cumsum(-3)
    x = x + (torch.arange(f) >= f // 2).view(f, 1, 1) * torch.randn(*lead, 1, n, d, generator=g)  # a scene cut
    return x.to(dtype), torch.rand(*lead, f, n, generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg", [aot.AOTConfig(), aot.AOTConfig(clips="dynamic"),
                                 aot.AOTConfig(keep_ref="previous", unmatched_anchors="absorb"),
                                 aot.AOTConfig(inter_merge="cosine"), aot.AOTConfig(inter_merge="none")],
                         ids=["default", "dynamic", "previous-absorb", "cosine", "none"])
def test_compress_equals_the_previous_merge_pass(monkeypatch, dtype, cfg):
    """Through aot.compress, today's defaults (13/13/6 clips at 32 frames), dynamic clips, a batch
    of 3 and both dtypes: every field, mix included, bit for bit."""
    for shape in ((32, 25, 16), (3, 20, 16, 8)):
        x, s = _video(shape, seed=len(shape), dtype=dtype)
        new, old = _both(x, s, cfg, monkeypatch)
        for name, a, b in zip(new._fields[:6], new[:6], old[:6]):
            assert torch.equal(a, b), (name, shape)
        for a, b in zip(new.mix, old.mix):
            assert torch.equal(a, b), shape


def _inter_ops(fn) -> collections.Counter:
    """Top-level operators of fn() inside aggregate_inter (either implementation), by name."""
    from torch.profiler import ProfilerActivity, profile, record_function
    names = collections.Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("inter-stage"):
            fn()
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        if p is None:
            names[e.name] += 1
    return names


def test_irregular_call_launches_fewer_operators(monkeypatch):
    """32 x 196 with today's defaults (clips of 13/13/6 frames, 12 merge steps): the operator count
    of the whole compress call drops (counted with torch's profiler, not timed), and the per-step
    gathers and writes (aten::index, index_put_) are gone from the merge pass."""
    x, s = _video((32, 196, 32), seed=0)
    cfg = aot.AOTConfig()
    assert aot.temporal.clip_length_of(cfg, 32) == 13
    aot.compress(x, s, config=cfg)  # build the cached index tensors
    new = launches.count(lambda: aot.compress(x, s, config=cfg))
    new_names = _inter_ops(lambda: aot.compress(x, s, config=cfg))
    monkeypatch.setattr(_COMPRESS, "aggregate_inter", aggregate_inter_before)
    aot.compress(x, s, config=cfg)
    old = launches.count(lambda: aot.compress(x, s, config=cfg))
    old_names = _inter_ops(lambda: aot.compress(x, s, config=cfg))
    monkeypatch.undo()
    assert new["reads"] == old["reads"], (new, old)
    assert new["ops"] <= old["ops"] - 80, (new["ops"], old["ops"])
    gathers = lambda n: n["aten::index"] + n["aten::index_put_"]  # noqa: E731
    assert gathers(new_names) <= gathers(old_names) - 80, (gathers(new_names), gathers(old_names))


def test_layout_order_is_a_prefix_per_step():
    """The position-major order: step k's frames are the k-th frames of the first active[k] clips
    (longest first) of every video, one contiguous run; the anchors' rows put back by unsort."""
    clips = [(0, 2), (2, 5), (7, 3), (10, 5)]
    lay = aot.temporal._Layout(clips, 15, 2, "cpu")
    assert not lay.regular and not lay.sorted
    assert lay.active == [4, 4, 3, 2, 2]
    order = [1, 3, 2, 0]  # lengths 5, 5, 3, 2 (stable among the two of 5)
    expect = [v * 15 + clips[order[r]][0] + k for k in range(1, 5) for v in range(2) for r in range(lay.active[k])]
    assert lay.pm_list == expect and lay.pm_sizes == [8, 6, 4, 4]
    assert lay.anchor_rows.tolist() == [v * 15 + clips[c][0] for v in range(2) for c in order]
    rows = lay.anchor_rows[lay.unsort].tolist()
    assert rows == [v * 15 + s for v in range(2) for s, _ in clips]
    assert lay.pm[lay.pm_of_lat].tolist() == lay.later_list


def test_fullgraph_compile_on_an_irregular_batch():
    """torch.compile(fullgraph=True) still captures the call on an irregular layout with several
    videos (the partial steps write a strided slice of the anchors), with the same outputs."""
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(2, 3, 16, 8, generator=g), torch.rand(2, 3, 16, generator=g)
    cfg = aot.AOTConfig(retention=0.25, n_iters=2, tol=None, clip_length=2)  # clips of 2 and 1 frames
    torch._dynamo.reset()
    fn = torch.compile(lambda x, s: aot.compress(x, s, config=cfg, validate=False), fullgraph=True)
    out, ref = fn(x, s), aot.compress(x, s, config=cfg)
    torch.testing.assert_close(out.tokens, ref.tokens, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(aot.Compressed._fields[1:6], out[1:6], ref[1:6]):
        assert torch.equal(a, b), name
