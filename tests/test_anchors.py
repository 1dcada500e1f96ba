"""Local-global anchors against a plain per-frame loop and hand-made cases."""

import pytest
import torch

from aot.anchors import select_anchors, select_anchors_varied, window_quotas, window_slices


def test_window_slices_tile_the_grid():
    for h, w, win in [(14, 14, (3, 3)), (13, 13, (3, 3)), (27, 27, (2, 4)), (2, 2, (3, 3))]:
        seen = torch.zeros(h, w, dtype=torch.long)
        for rs, cs in window_slices(h, w, win):
            seen[rs, cs] += 1
        assert (seen == 1).all()


def test_window_quotas_spread_and_overflow():
    assert window_quotas(9, [20] * 9) == [1] * 9
    q = window_quotas(4, [20] * 9)
    assert sum(q) == 4 and max(q) == 1 and q != [1, 1, 1, 1, 0, 0, 0, 0, 0]  # spread, not piled
    assert window_quotas(20, [20] * 9) == [2, 2, 2, 2, 3, 2, 2, 2, 3]  # floor((i+1)20/9) - floor(i 20/9)
    q = window_quotas(10, [0, 1, 9])  # empty and small windows give their share away
    assert q[0] == 0 and q[1] == 1 and sum(q) == 10
    with pytest.raises(ValueError, match="cannot place"):
        window_quotas(11, [0, 1, 9])


def _loop_reference(scores, local, grid, m, share, windows):
    h, w = grid
    out = []
    for f in range(scores.shape[0]):
        k_global = int(share * m + 0.5)
        cells = [[r * w + c for r in range(h)[rs] for c in range(w)[cs]] for rs, cs in window_slices(h, w, windows)]
        quotas = window_quotas(m - k_global, [len(c) for c in cells])
        picked = set()
        for cell, q in zip(cells, quotas):
            ranked = sorted(cell, key=lambda i: -float(local[f, i]))
            picked.update(ranked[:q])
        rest = sorted((i for i in range(h * w) if i not in picked), key=lambda i: -float(scores[f, i]))
        picked.update(rest[:k_global])
        out.append(sorted(picked))
    return torch.tensor(out)


@pytest.mark.parametrize("grid, m, share", [((14, 14), 39, 0.5), ((13, 13), 20, 0.0), ((14, 14), 7, 1.0),
                                             ((27, 27), 100, 0.3), ((4, 5), 20, 0.5)])
def test_matches_loop(grid, m, share):
    g = torch.Generator().manual_seed(m)
    n = grid[0] * grid[1]
    scores, local = torch.rand(3, n, generator=g), torch.rand(3, n, generator=g)
    got = select_anchors(scores, local, grid, m, global_share=share, windows=(3, 3))
    assert torch.equal(got, _loop_reference(scores, local, grid, m, share, (3, 3)))


def test_local_anchors_cover_every_window_and_global_take_the_peaks():
    grid, n = (9, 9), 81
    scores = torch.zeros(1, n)
    scores[0, :9] = torch.arange(10, 19).float()  # the global peaks all sit in the top-left window rows
    local = torch.rand(1, n, generator=torch.Generator().manual_seed(0))
    idx = select_anchors(scores, local, grid, 18, global_share=0.5, windows=(3, 3))[0]
    rows, cols = idx // 9, idx % 9
    windows_hit = set(((rows // 3) * 3 + cols // 3).tolist())
    assert windows_hit == set(range(9))  # every window has at least its local anchor
    assert set(range(9)) <= set(idx.tolist())  # the 9 global peaks are all anchors


def test_varied_counts_pad_and_match_fixed():
    g = torch.Generator().manual_seed(3)
    scores, local = torch.rand(4, 196, generator=g), torch.rand(4, 196, generator=g)
    counts = torch.tensor([10, 11, 10, 11])
    idx, valid = select_anchors_varied(scores, local, (14, 14), counts)
    assert valid.sum(1).tolist() == [10, 11, 10, 11]
    for f in range(4):
        ref = select_anchors(scores[f:f + 1], local[f:f + 1], (14, 14), int(counts[f]))[0]
        assert torch.equal(idx[f][valid[f]], ref)


@pytest.mark.parametrize("grid, m, share", [((14, 14), 39, 0.5), ((13, 13), 20, 0.0), ((4, 5), 9, 1.0),
                                             ((27, 27), 100, 0.3)])
def test_ties_go_to_the_lower_index_as_in_the_loop(grid, m, share):
    """Coarse scores (many exact ties, as bfloat16 attention gives): the plain loop's stable order."""
    g = torch.Generator().manual_seed(m)
    n = grid[0] * grid[1]
    scores, local = (torch.rand(3, n, generator=g) * 3).round(), (torch.rand(3, n, generator=g) * 3).round()
    for s, l in ((scores, local), (torch.ones(3, n), torch.ones(3, n))):
        got = select_anchors(s, l, grid, m, global_share=share, windows=(3, 3))
        assert torch.equal(got, _loop_reference(s, l, grid, m, share, (3, 3)))
        idx, valid = select_anchors_varied(s, l, grid, [m, m + 1, m])
        assert torch.equal(idx[1], _loop_reference(s[1:2], l[1:2], grid, m + 1, 0.5, (3, 3))[0])
        assert torch.equal(idx[0][valid[0]], _loop_reference(s[:1], l[:1], grid, m, 0.5, (3, 3))[0])
