"""Checks of task benchmark v3 (benchmarks/needle3, benchmarks/task_v3.py): item geometry, token
labels, the set reader's answers, its training and thresholds, the paired bootstrap."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from needle3 import data as D  # noqa: E402
from needle3 import reader as R  # noqa: E402

import task_v3 as T  # noqa: E402

ASPECTS = [1.0, 0.67, 0.67, 0.67, 0.67, 1.0, 0.82, 1.0]


def _coverage_by_pixels(box, size, grid):
    """Independent answer: rasterise the box on the pixel grid and count pixels per cell (cells
    aligned to pixels: H and W multiples of the grid)."""
    H, W = size
    gh, gw = grid
    m = np.zeros((H, W))
    x0, y0, w, h = box
    m[y0:y0 + h, x0:x0 + w] = 1
    return m.reshape(gh, H // gh, gw, W // gw).mean((1, 3)).flatten()


def test_cell_coverage_matches_pixel_count():
    rng = np.random.default_rng(0)
    for _ in range(50):
        H, W = 8 * int(rng.integers(5, 30)), 8 * int(rng.integers(5, 30))
        w, h = int(rng.integers(1, W)), int(rng.integers(1, H))
        box = (int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)), w, h)
        np.testing.assert_allclose(D.cell_coverage(box, (H, W), (8, 8)).numpy(), _coverage_by_pixels(box, (H, W), (8, 8)),
                                   atol=1e-6)


def test_cell_labels_threshold_and_background():
    sp = D.Spec("val", 0, 0, "single", 3, (5,), (3,), ((0, 0, 40, 40),), duration=1)
    lab = D.cell_labels(sp, (80, 80), (8, 8), background=8)[0].reshape(8, 8)
    assert (lab[:4, :4] == 3).all()  # fully covered cells
    assert (lab[4:, :] == 8).all() and (lab[:, 4:] == 8).all()
    sp = D.Spec("val", 0, 0, "single", 3, (5,), (3,), ((5, 5, 10, 10),), duration=1)  # 10x10 px cells
    lab = D.cell_labels(sp, (80, 80), (8, 8), background=8)[0].reshape(8, 8)
    # the box covers 25% of four cells: below COVER_POS, so ignored (-1), not background
    assert (lab[:2, :2] == -1).all() and (lab == 8).sum() == 60


def test_items_deterministic_durations_and_geometry():
    cfg = D.Config()
    sizes = {0: (144, 176), 1: (272, 640)}
    a = [D.sample_item(cfg, "val", i, [0, 1], sizes, ASPECTS) for i in range(200)]
    assert a == [D.sample_item(cfg, "val", i, [0, 1], sizes, ASPECTS) for i in range(200)]
    assert a != [D.sample_item(D.Config(seed=1), "val", i, [0, 1], sizes, ASPECTS) for i in range(200)]
    singles = [s for s in a if s.kind == "single" and s.cls >= 0]
    assert {s.duration for s in singles} == set(D.DURATIONS)
    assert any(s.moving for s in singles) and any(not s.moving and s.duration > 1 for s in singles)
    for s in a:
        H, W = sizes[s.clip]
        assert len(s.frames) == len(s.boxes) == len(s.frame_cls)
        assert all(0 <= f < cfg.num_frames for f in s.frames) and list(s.frames) == sorted(set(s.frames))
        for x0, y0, w, h in s.boxes:
            assert 0 <= x0 and x0 + w <= W and 0 <= y0 and y0 + h <= H
        if s.kind == "single" and s.cls >= 0:
            assert s.answers[1] == s.frames[0] * 4 // cfg.num_frames
            assert {2 * (y + h / 2 >= H / 2) + (x + w / 2 >= W / 2) for x, y, w, h in s.boxes} == {s.answers[2]}
            assert len(s.frames) == s.duration and s.frames == tuple(range(s.frames[0], s.frames[0] + s.duration))
        if s.kind == "order":
            assert s.answers[3] == s.frame_cls[0] != s.frame_cls[-1]
            first_b = s.frame_cls.index(s.frame_cls[-1])
            assert s.frames[first_b] - s.frames[first_b - 1] >= 2  # a frame between the two needles
        if s.kind == "count":
            assert s.answers[4] == int(len(s.frames) == 2)
            assert len(s.frames) == 1 or s.frames[1] - s.frames[0] >= cfg.min_gap
    train = [D.sample_item(cfg, "train", i, [0], sizes, ASPECTS) for i in range(100)]
    assert {s.duration for s in train if s.duration} <= set(D.TRAIN_DURATIONS)


def test_needle_looks_alike_on_every_video():
    """Sizes are drawn in the square the ViT sees: the shown aspect is the image's on any frame."""
    cfg = D.Config()
    rng = np.random.default_rng(0)
    for H, W in ((144, 176), (272, 640), (720, 1280)):
        for _ in range(20):
            w, h = D._size(rng, cfg, H, W, 0.67)
            shown = (h / H) / (w / W)
            assert abs(shown - 0.67) < 0.05
            assert cfg.side_range[0] - 0.01 <= w / W <= cfg.side_range[1] + 0.01


def test_split_by_video():
    clips = D.base_clips()
    by = {s: {c.video for c in clips if c.split == s} for s in D.SPLITS}
    assert len(by["train"]) == 3 and len(by["val"]) == 1 and len(by["test"]) == 1
    assert not (by["train"] & by["val"]) and not (by["train"] & by["test"]) and not (by["val"] & by["test"])


def _probs(R_, K=8, bg=0.99):
    p = torch.full((R_, K + 1), (1 - bg) / K)
    p[:, K] = bg
    return p


def _put(p, r, k, v):
    K = p.shape[1] - 1
    p[r] = (1 - v) / K
    p[r, k] = v


def test_answer_rules_and_set_size_independence():
    Fr, N, grid = 32, 64, (8, 8)
    frames = torch.arange(Fr).repeat_interleave(N)
    cells = torch.arange(N).repeat(Fr)
    p = _probs(Fr * N)
    assert R.answer(p, frames, cells, grid, 0.5, 0.5)[0] == 8  # nothing above tau: none
    # class 2 in frames 9..11 at cell (6, 1) (bottom-left), class 5 at frame 20 (weaker)
    for f in (9, 10, 11):
        _put(p, f * N + 6 * 8 + 1, 2, 0.9)
    _put(p, 20 * N + 3, 5, 0.7)
    obj, quarter, quadrant, order, count = R.answer(p, frames, cells, grid, 0.5, 0.5)
    assert (obj, quarter, quadrant, order) == (2, 1, 2, 2)
    assert count == 0  # frames 9-11 are one run
    _put(p, 14 * N + 6 * 8 + 1, 2, 0.9)  # shown again after a gap: twice
    assert R.answer(p, frames, cells, grid, 0.5, 0.5)[4] == 1
    assert R.answer(p, frames, cells, grid, 0.5, 0.95)[4] == 0  # count threshold above every score
    # the answers depend on which tokens are in the set, not how many: drop background tokens
    keep = (p[:, 8] < 0.5) | (torch.arange(Fr * N) % 7 == 0)
    assert R.answer(p[keep], frames[keep], cells[keep], grid, 0.5, 0.5) == R.answer(p, frames, cells, grid, 0.5, 0.5)
    # order: the earlier class wins even when it scores lower
    q = _probs(Fr * N)
    _put(q, 3 * N, 1, 0.6)
    _put(q, 10 * N, 4, 0.99)
    assert R.answer(q, frames, cells, grid, 0.5, 0.5)[3] == 1


def test_token_classifier_learns_and_thresholds_fit():
    torch.manual_seed(0)
    K, d = 3, 16
    centres = torch.randn(K + 1, d) * 3
    y = torch.randint(0, K + 1, (3000,))
    x = centres[y] + torch.randn(3000, d)
    m = R.train(x, y, R.TokenConfig(dim=d, hidden=32, num_classes=K, epochs=20, batch_size=256))
    yt = torch.randint(0, K + 1, (500,))
    xt = centres[yt] + torch.randn(500, d)
    assert float((m(xt).argmax(-1) == yt).float().mean()) > 0.95
    ens = R.Ensemble([m, m])
    torch.testing.assert_close(R.probs_of(ens, xt), m(xt).softmax(-1))
    # thresholds: items whose needle scores 0.6 and "none" items whose background peaks at 0.4
    frames, cells = torch.zeros(10, dtype=torch.long), torch.arange(10)
    probs, ans = [], []
    for i in range(40):
        p = _probs(10, K)
        has = i % 2 == 0
        _put(p, 0, 1, 0.6 if has else 0.4)
        probs.append((p, frames, cells))
        ans.append([1 if has else K, -1, -1, -1, -1])
    tau, _ = R.fit_thresholds(probs, torch.tensor(ans), (2, 5))
    assert 0.4 < tau <= 0.6


def test_paired_bootstrap_matches_plain_resampling():
    rng = np.random.default_rng(0)
    M = 60
    ans = np.full((M, 5), -1)
    ans[:30, 0] = 1
    ans[30:, 4] = 1
    a = np.where(ans >= 0, rng.integers(0, 2, (M, 5)), -1).tolist()
    b = np.where(ans >= 0, rng.integers(0, 2, (M, 5)), -1).tolist()
    full = {q: 0.8 for q in D.QUESTIONS}
    d, se, lo, hi = T.bootstrap_diff(a, b, full, n_boot=400, seed=3)

    def score(c):  # mean over the asked questions of accuracy / full accuracy, in %
        c = np.asarray(c)
        vals = [100 * c[c[:, q] >= 0, q].mean() / 0.8 for q in range(5) if (c[:, q] >= 0).any()]
        return sum(vals) / len(vals)

    assert math.isclose(d, score(a) - score(b), abs_tol=1e-9)
    assert lo < d < hi and se > 0
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, M, (400, M), generator=g).numpy()
    # the plain loop keeps the full set's per-question item counts (as item_scores does)
    plain = []
    for row in idx:
        za = T.item_scores(np.asarray(a)[row].tolist(), full)  # weights of the resample itself
        zb = T.item_scores(np.asarray(b)[row].tolist(), full)
        plain.append(float((za - zb).sum()))
    # the two weightings differ only by the resample's question counts: same centre and spread
    assert abs(np.mean(plain) - d) < 3 * se and 0.5 < np.std(plain) / se < 2.0


def _tiny_sets(seed=0):
    g = torch.Generator().manual_seed(seed)
    C, Fr, N, d = 2, 32, 64, 16
    specs, xs, ss, labs = [], [], [], []
    for i in range(6):
        frames = () if i == 0 else tuple(range(3 * i, 3 * i + (i % 3) + 1))
        specs.append(D.Spec("val", i, i % C, "single", -1 if i == 0 else i % 8, frames, (i % 8,) * len(frames),
                            ((0, 0, 8, 8),) * len(frames), (8 if i == 0 else i % 8, 0, 0, -1, -1), len(frames)))
        xs.append(torch.randn(len(frames), N, d, generator=g).half())
        ss.append(torch.rand(len(frames), N, generator=g))
        labs.append(torch.full((len(frames), N), 8, dtype=torch.long))
    return D.Sets(torch.randn(C, Fr, N, d, generator=g).half(), torch.rand(C, Fr, N, generator=g),
                  torch.rand(C, Fr, N, generator=g), specs, xs, ss, ss, labs)


def test_full_fast_path_and_compressed_path_agree_with_plain_reading():
    from types import SimpleNamespace

    ds = _tiny_sets()
    torch.manual_seed(0)
    models = [R.TokenClassifier(R.TokenConfig(dim=16, hidden=8)) for _ in range(2)]
    ens = R.Ensemble(models).eval()
    fast = R.full_probs(ens, ds)
    N = 64
    for i in range(len(ds)):
        x, _, _ = ds.full(i)  # plain: the item's whole (F, N, d) video
        plain = torch.stack([m(x.flatten(0, 1)).softmax(-1) for m in models]).mean(0)
        torch.testing.assert_close(fast[i][0], plain)
        assert torch.equal(fast[i][1], torch.arange(32).repeat_interleave(N))
        assert torch.equal(fast[i][2], torch.arange(N).repeat(32))

    def identity(x, s, ls, grid):  # a "method" keeping every token, in a shuffled order
        F_, N_ = x.shape[:2]
        perm = torch.randperm(F_ * N_, generator=torch.Generator().manual_seed(1))
        pos = torch.arange(F_ * N_)[perm]
        return SimpleNamespace(tokens=x.flatten(0, 1)[perm], frames=pos // N_, positions=pos)

    tau = float(torch.quantile(torch.cat([p[:, :8].amax(1) for p, _, _ in fast]), 0.999))  # a few detections
    th = (tau, tau)
    pred = T.predict(ens, ds, th)
    assert (pred[:, 0] < 8).any() and len({tuple(r) for r in pred[:, 1:3].tolist()}) > 1  # not degenerate
    assert torch.equal(T.predict(ens, ds, th, identity), pred)


def test_base_clip_of_a_half_decodes_the_frames_of_that_half():
    """The benchmarks' half-video clips (needle/data.py decode_clip) read the frames aot.video
    decodes at those indexes; a 'second' half clip starts in the second half. (aot.video's
    _decode_wanted grew a 4-tuple return in issue 20 and the 2-tuple unpacking here broke every
    encode, unnoticed: this test would have caught it.)"""
    from needle import data as V2

    from aot.video import read_frames, sample_indices

    video = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "carphone_pristine.mp4"
    if not video.exists():
        pytest.skip("shared videos not present")
    total = read_frames(video, 2).total_frames
    clip = V2.BaseClip("carphone_pristine.mp4", "val", "second", False)
    frames = V2.decode_clip(clip, num_frames=3, video_dir=video.parent)
    assert frames.shape[0] == 3 and frames.dtype == np.uint8
    idx = total // 2 + sample_indices(total - total // 2, 3)
    everything = read_frames(video, total).frames  # every frame, by index
    for k, i in enumerate(idx):
        assert np.array_equal(frames[k], everything[int(i)])
    mirrored = V2.decode_clip(V2.BaseClip("carphone_pristine.mp4", "val", "second", True), num_frames=3,
                              video_dir=video.parent)
    assert np.array_equal(mirrored, frames[:, :, ::-1])


def test_a_later_draw_is_the_tail_of_a_longer_prefix():
    """--items START:STOP (issue 22's fresh test draw) gives exactly the items a longer prefix would
    have at those indexes, and none of the earlier prefix's items."""
    cfg = D.Config()
    later = D.item_specs(cfg, {"test": (400, 406)})["test"]
    prefix = D.item_specs(cfg, {"test": 406})["test"]
    assert [s.index for s in later] == list(range(400, 406))
    assert later == prefix[400:]
    with pytest.raises(ValueError, match="0 <= start < stop"):
        D.item_range((6, 6))
