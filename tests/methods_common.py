"""Helpers shared by the comparison-method tests (test_methods_contract, _baselines, _peers, _prunevid)."""

import math

import torch


def video(f, n, d=8, seed=0, dtype=torch.float32, still=0.0):
    """Random tokens; ``still`` > 0 mixes every frame towards frame 0 (so cells repeat over time)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(f, n, d, generator=g, dtype=torch.float64)
    x = still * x[:1] + (1 - still) * x
    return x.to(dtype), torch.rand(f, n, generator=g).to(dtype if dtype.is_floating_point else torch.float32)


def check_invariants(out, f, n, r):
    """The output contract of every method: exactly r rows, sizes = tokens absorbed, sorted positions."""
    a = out.assignment
    assert out.tokens.shape[0] == r and out.sizes.shape == (r,) and a.shape == (f * n,)
    assert torch.equal(torch.bincount(a[a >= 0], minlength=r), out.sizes)
    assert (out.positions.diff() > 0).all()  # sorted by (frame, position), one token per cell
    assert torch.equal(out.frames, out.positions // n)
    assert ((a >= -1) & (a < r)).all()
    assert torch.equal(a[out.positions], torch.arange(r))  # each output token sits on a cell it absorbed


# ---- plain-loop pieces of the reimplementations (test_methods_peers, test_methods_prunevid) -----

def cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def settle_loop(total, quotas, counts, caps):
    """aot.methods.common.settle by hand."""
    counts = list(counts)
    while sum(counts) > total:
        pool = [i for i in range(len(counts)) if counts[i] >= 2]
        if not pool:
            pool = [i for i in range(len(counts)) if counts[i] >= 1]
        best = pool[0]
        for i in pool[1:]:
            if counts[i] - quotas[i] >= counts[best] - quotas[best]:
                best = i
        counts[best] -= 1
    while sum(counts) < total:
        pool = [i for i in range(len(counts)) if counts[i] < caps[i]]
        best = pool[0]
        for i in pool[1:]:
            if quotas[i] - counts[i] > quotas[best] - counts[best]:
                best = i
        counts[best] += 1
    return counts


def dpc_loop(feat, c, k):
    """DPC-kNN by hand, k neighbours for the density capped at the number of rows (HoliTom and
    FlashVID cap it at c too: they pass min(K, c)): centres (ascending) and per row the index of its
    centre (nearest, ties to the lower centre)."""
    m, d = len(feat), len(feat[0])
    dist = [[float((feat[a] - feat[b]).norm()) / math.sqrt(d) for b in range(m)] for a in range(m)]
    kk = min(k, m)
    dens = [math.exp(-sum(v * v for v in sorted(row)[:kk]) / kk) for row in dist]
    dmax = max(max(row) for row in dist)
    score = []
    for a in range(m):
        denser = [dist[a][b] for b in range(m) if (dens[b], -b) > (dens[a], -a)]
        score.append(dens[a] * (min(denser) if denser else dmax))
    centres = sorted(sorted(range(m), key=lambda a: (-score[a], a))[:c])
    owner = [a if a in centres else min(centres, key=lambda b: (float((feat[a] - feat[b]).norm()), b))
             for a in range(m)]
    return centres, owner


def assert_mix(out, want, f, n):
    """out.mix, as a dense (R, F * N) matrix, equals a plain loop's weights: want {position: {flat input: weight}}
    for every output row (rows in position order)."""
    r = out.tokens.shape[0]
    got = torch.zeros(r, f * n, dtype=torch.float64)
    got.index_put_((out.mix.rows, out.mix.cols), out.mix.weights.double(), accumulate=True)
    expect = torch.zeros(r, f * n, dtype=torch.float64)
    for row, pos in enumerate(out.positions.tolist()):
        for col, w in want[pos].items():
            expect[row, col] += w
    torch.testing.assert_close(got, expect)
