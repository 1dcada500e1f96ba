"""Issue 17, item 4: FastVID, FlashVID, HoliTom and PruneVid made cheaper without changing any output.

The oracle is the implementation before the change, kept in tests/peers_reference (a copy of
aot/methods/{common,fastvid,flashvid,holitom,prunevid}.py at d8ff83d). Every field of the returned
Compressed (tokens, sizes, frames, positions, assignment, dynamic, mix rows/cols/weights) must be
equal bit for bit, on random videos, still videos (near-duplicate tokens), videos with exactly
repeated tokens (tied distances), several shapes, retentions and seeds, batch and single video,
float32/float64/bfloat16 inputs.

The DPC-kNN distances are now exact (torch.cdist without the matmul shortcut, as before) only where a
choice can depend on them, chosen from float64 bounds (common._cdist_bounds): the bounds must hold
on adversarial inputs (else outputs could change) and be tight (else the exact work comes back).
"""

import pytest
import torch

import aot.methods as methods
import peers_reference
from aot.methods import common
from methods_common import video
from peers_reference import common as ref_common

NAMES = ["fastvid", "flashvid", "holitom", "prunevid"]


def _cdist(a, b):
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _fields(out):
    return list(out[:6]) + list(out.mix)


def assert_same(new, old, where=""):
    for i, (a, b) in enumerate(zip(_fields(new), _fields(old), strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, (where, i, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{where}: field {i} differs"


def _scenes(f, n, d, scene, seed):
    """A new scene every ``scene`` frames: a still background per cell, half the cells drifting, some noise
    (segments, static cells and merges for every method, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    k = -(-f // scene)
    base = torch.randn(k, 1, n, d, generator=g).expand(k, scene, n, d).reshape(-1, n, d)[:f]
    drift = (torch.rand(1, n, 1, generator=g) < 0.5) * torch.cumsum(0.3 * torch.randn(f, n, d, generator=g), 0)
    return base + drift + 0.1 * torch.randn(f, n, d, generator=g), torch.rand(f, n, generator=g)


def _videos():
    """(label, x, scores): random, still (near duplicates), exactly repeated tokens (tied distances)."""
    out = []
    for f, n, d, seed in ((8, 36, 64, 0), (12, 49, 128, 1), (16, 64, 96, 2), (6, 25, 256, 3)):
        out.append((f"random {f}x{n}x{d}", *video(f, n, d, seed=seed)))
    x, s = video(10, 36, 64, seed=4, still=0.97)
    out.append(("still 10x36x64", x, s))
    x, s = video(8, 36, 48, seed=5)
    x[:, 18:] = x[:, :18]  # every token twice in its frame: equal distances, equal densities
    x[4:] = x[:4]  # and frames repeated
    out.append(("repeated 8x36x48", x, s))
    for f, n, d, scene, seed in ((24, 49, 96, 6, 11), (16, 36, 64, 4, 12)):
        out.append((f"scenes {f}x{n}x{d}", *_scenes(f, n, d, scene, seed)))
    g = torch.Generator().manual_seed(6)
    x = 30 + 0.5 * torch.randn(8, 36, 64, generator=g)  # a large common component (cancellation in |a|^2 + |b|^2 - 2ab)
    out.append(("offset 8x36x64", x, torch.rand(8, 36, generator=g)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_equal_to_the_previous_implementation(name):
    m = methods.get(name)
    ref = getattr(peers_reference, name)
    for label, x, s in _videos():
        for retention in (0.05, 0.1, 0.3, 0.7):
            cfg = m.config(retention=retention)
            assert_same(m(x, s, config=cfg), ref(x, s, config=cfg), f"{label} @ {retention}")


@pytest.mark.parametrize("name", NAMES)
def test_equal_to_the_previous_implementation_batch_and_dtypes(name):
    m = methods.get(name)
    ref = getattr(peers_reference, name)
    cfg = m.config(retention=0.15)
    xs, ss = zip(*(video(8, 36, 64, seed=10 + i, still=0.6 * (i % 2)) for i in range(3)))
    x, s = torch.stack(xs), torch.stack(ss)
    assert_same(m(x, s, config=cfg), ref(x, s, config=cfg))
    for dtype in (torch.float64, torch.bfloat16):
        xd, sd = video(8, 36, 64, seed=20, dtype=dtype)
        assert_same(m(xd, sd, config=cfg), ref(xd, sd, config=cfg))


@pytest.mark.parametrize("name", NAMES)
def test_equal_at_a_model_shape(name):
    """32 x 196 x 3584 (Qwen2.5-VL-7B's width) at 10%: white noise (benchmarks/launches.py's input) and
    scenes of 8 frames (benchmarks/method_launches.py's kind of input)."""
    m = methods.get(name)
    g = torch.Generator().manual_seed(0)
    cfg = m.config(retention=0.1)
    for x, s in ((torch.randn(32, 196, 3584, generator=g), torch.rand(32, 196, generator=g)),
                 _scenes(32, 196, 3584, 8, 0)):
        assert_same(m(x, s, config=cfg), getattr(peers_reference, name)(x, s, config=cfg))


def test_dpc_knn_many_equal_with_padding_mixed_k_and_zero_counts():
    g = torch.Generator().manual_seed(7)
    feat = torch.randn(5, 30, 40, generator=g)
    feat[1, 10:20] = feat[1, :10]  # ties
    sizes, counts, ks = [30, 25, 9, 30, 1], [3, 5, 0, 30, 1], [4, 7, 2, 7, 1]
    new = common.dpc_knn_many(feat, counts, ks, sizes=sizes, return_order=True)
    old = ref_common.dpc_knn_many(feat, counts, ks, sizes=sizes, return_order=True)
    for a, b in zip(new, old, strict=True):
        assert torch.equal(a, b)


def _bound_inputs():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(3, 40, 512, generator=g)
    return {
        "random": base,
        "offset": 100 + base,  # |a|^2 + |b|^2 - 2ab cancels: the float64 estimate's error is largest
        "near duplicates": base[:, :1] + 1e-5 * base,
        "repeated": base[:, :10].repeat(1, 4, 1),
        "tiny": 1e-21 * base,  # squared differences underflow
        "huge": 1e18 * base,  # squared differences overflow to inf
        "one dim": base[..., :1],
        "wide": torch.randn(2, 12, 8192, generator=g),
        "mixed scales": base * torch.logspace(-3, 3, 40).view(1, 40, 1),
    }


@pytest.mark.parametrize("label", list(_bound_inputs()))
def test_cdist_bounds_hold(label):
    feat = _bound_inputs()[label]
    lo, hi = common._cdist_bounds(feat)
    exact = _cdist(feat, feat).double()
    assert (lo <= exact).all() and (exact <= hi).all()


def test_cdist_bounds_are_tight_where_it_matters():
    """On random 3584-wide tokens the bounds are within 5e-4 of each other, relative (the float32 kernel's
    own worst case is 2.1e-4): few pairs need the exact kernel."""
    g = torch.Generator().manual_seed(9)
    feat = torch.randn(2, 64, 3584, generator=g)
    lo, hi = common._cdist_bounds(feat)
    off = ~torch.eye(64, dtype=torch.bool)
    assert ((hi - lo) / hi)[:, off].max() < 5e-4


def test_exact_pairs_bit_for_bit_as_the_full_matrix(monkeypatch):
    g = torch.Generator().manual_seed(10)
    feat = torch.randn(2, 30, 100, generator=g)
    full = _cdist(feat, feat)
    monkeypatch.setattr(common, "_PAIR_CHUNK", 700)  # 7 pairs a chunk: several chunks and a short last one
    mask = torch.rand(2, 30, 30, generator=g) < 0.3
    got = common._exact_where(feat, mask)
    assert torch.equal(got[mask], full[mask]) and torch.isinf(got[~mask]).all()
    cols = torch.randint(0, 30, (2, 5), generator=g)
    sub = torch.rand(2, 30, 5, generator=g) < 0.5
    got = common._exact_where(feat, sub, cols)
    want = full.gather(2, cols.unsqueeze(1).expand(2, 30, 5))
    assert torch.equal(got[sub], want[sub]) and torch.isinf(got[~sub]).all()


def test_fewer_exact_pairs_than_the_full_matrix(monkeypatch):
    """At 32 x 196 x 3584 @ 10% the exact kernel runs on under a tenth of the pairs it used to."""
    done = []
    orig = common._exact_pairs

    def counting(flat, rows, cols):
        done.append(rows.numel())
        return orig(flat, rows, cols)

    monkeypatch.setattr(common, "_exact_pairs", counting)
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(16, 196, 3584, generator=g), torch.rand(16, 196, generator=g)
    m = methods.get("prunevid")
    m(x, s, config=m.config(retention=0.1))
    assert 0 < sum(done) < 0.1 * 16 * 196 * 196
