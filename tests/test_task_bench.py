"""Fast checks of the needle task benchmark (benchmarks/needle): paste, items, split, reader, evaluation."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from needle import data as D  # noqa: E402
from needle import evaluate as E  # noqa: E402
from needle import reader as RD  # noqa: E402


def _needle_specs(cfg, n=60, size=(60, 80)):
    specs = [D.sample_item(cfg, "train", i, [0], {0: size}) for i in range(n)]
    return [s for s in specs if s.cls >= 0], [s for s in specs if s.cls < 0]


def test_paste_puts_needle_where_the_item_says():
    cfg = D.GenConfig()
    H, W = 60, 80
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(cfg.num_frames, H, W, 3), dtype=np.uint8)
    needles, nones = _needle_specs(cfg, size=(H, W))
    assert needles and nones
    for spec in needles[:10]:
        out = D.paste(frames, spec)
        assert out.shape == (len(spec.frames), H, W, 3)
        assert 2 <= len(spec.frames) <= 3 and list(spec.frames) == list(range(spec.frames[0], spec.frames[-1] + 1))
        obj, quarter, quadrant = spec.answers
        assert obj == spec.cls and quarter == spec.frames[0] * 4 // cfg.num_frames
        for k, (x0, y0, w, h) in enumerate(spec.boxes):
            assert 0 <= x0 and x0 + w <= W and 0 <= y0 and y0 + h <= H
            assert 0.12 * W - 1 <= w <= 0.25 * W + 1
            np.testing.assert_array_equal(out[k, y0:y0 + h, x0:x0 + w], D.needle_image(cfg.classes[spec.cls], w, h))
            mask = np.ones((H, W), bool)
            mask[y0:y0 + h, x0:x0 + w] = False
            np.testing.assert_array_equal(out[k][mask], frames[spec.frames[k]][mask])  # nothing else touched
            cx, cy = x0 + w / 2, y0 + h / 2
            assert quadrant == 2 * (cy >= H / 2) + (cx >= W / 2)
    assert all(s.answers[1:] == (-1, -1) and s.answers[0] == len(cfg.classes) for s in nones)


def test_needle_images_are_distinct_rgb():
    imgs = [D.needle_image(c, 24, 20) for c in D.CLASSES]
    assert all(im.shape == (20, 24, 3) and im.dtype == np.uint8 for im in imgs)
    assert len({im.tobytes() for im in imgs}) == len(D.CLASSES)


def test_items_deterministic_and_split_by_video():
    cfg = D.GenConfig()
    sizes = {i: (50, 70) for i in range(len(D.base_clips()))}
    a = [D.sample_item(cfg, "test", i, [0, 1, 2], sizes) for i in range(30)]
    b = [D.sample_item(cfg, "test", i, [0, 1, 2], sizes) for i in range(30)]
    assert a == b
    c = [D.sample_item(D.GenConfig(seed=1), "test", i, [0, 1, 2], sizes) for i in range(30)]
    assert a != c
    clips = D.base_clips()
    train_videos = {c.video for c in clips if c.split == "train"}
    test_videos = {c.video for c in clips if c.split == "test"}
    assert train_videos and test_videos and not train_videos & test_videos
    if not all((D.VIDEO_DIR / v).exists() for v in D.VIDEOS):
        pytest.skip("benchmark videos not present")
    specs = D.item_specs(cfg, 40, 20)
    assert {clips[s.clip].video for s in specs["train"]} <= train_videos
    assert {clips[s.clip].video for s in specs["test"]} <= test_videos
    assert specs["train"][:10] == D.item_specs(cfg, 10, 5)["train"]  # prefix-stable


def _synthetic(M=24, C=3, F=8, N=16, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames, xs, ss, lss = [], [], [], []
    for i in range(M):
        n = i % 3  # 0: none, else 1-2 needle frames
        f = torch.arange(n) + (i % (F - 2))
        frames.append(f)
        xs.append(torch.randn(n, N, d, generator=g).half())
        ss.append(torch.rand(n, N, generator=g))
        lss.append(torch.rand(n, N, generator=g))
    return D.NeedleSet(torch.randn(C, F, N, d, generator=g).half(), torch.rand(C, F, N, generator=g),
                       torch.rand(C, F, N, generator=g), torch.arange(M) % C, frames, xs, ss, lss,
                       torch.zeros(M, 3, dtype=torch.long), (4, 4))


def _reader(ds):
    torch.manual_seed(0)
    _, F, N, d = ds.base_x.shape
    return RD.Reader(RD.ReaderConfig(dim=d, hidden=16, num_frames=F, num_cells=N, num_classes=(5, 4, 4))).eval()


def test_reader_accepts_full_and_compressed_sets():
    ds = _synthetic()
    reader = _reader(ds)
    # the training fast path equals the generic forward on full token sets
    fast = RD.predict_full(reader, ds)
    generic = E.predict_method(reader, ds, None, batch_size=5, progress=False)
    assert torch.equal(fast, generic)
    with torch.no_grad():
        idx = torch.arange(6)
        fast_logits = RD.full_logits(reader, ds, idx)
        sets = []
        for i in idx.tolist():
            x, _, _ = ds.full(i)
            F_, N = x.shape[:2]
            sets.append((x.flatten(0, 1), torch.arange(F_).repeat_interleave(N), torch.arange(N).repeat(F_)))
        ref = reader(torch.stack([s[0] for s in sets]), torch.stack([s[1] for s in sets]), torch.stack([s[2] for s in sets]))
        for a, b in zip(fast_logits, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # variable-size sets, padded and masked: padding must not change an item's answer
    sets = [(torch.randn(r, ds.base_x.shape[-1]), torch.randint(0, 8, (r,)), torch.randint(0, 16, (r,))) for r in (3, 11, 1)]
    together = E.predict_sets(reader, sets)
    alone = torch.cat([E.predict_sets(reader, [s]) for s in sets])
    assert together.shape == (3, 3) and torch.equal(together, alone)


def test_evaluation_identity_is_100_percent_and_compression_runs():
    ds = _synthetic()
    reader = _reader(ds)
    ds.answers = RD.predict_full(reader, ds)  # answers = the reader's own full-token answers: full acc = 100%
    full = RD.accuracy(ds.answers, ds.answers)
    r = E.evaluate(reader, ds, E.Variant("aot", "aot"), 1.0, full, progress=False)
    assert r.rel == {"obj": 100.0, "quarter": 100.0, "quadrant": 100.0, "mean": 100.0}
    r = E.evaluate(reader, ds, E.Variant("aot", "aot"), 0.25, full, progress=False)
    assert r.rel is not None and 0.0 <= r.rel["mean"] <= 100.0
    assert len(r.correct) == len(ds)
    v = E.parse_variant("lit=aot:mass=literal,anchor_share=0.7,clip_length=None")
    assert v == E.Variant("lit", "aot", (("mass", "literal"), ("anchor_share", 0.7), ("clip_length", None)))
    r = E.evaluate(reader, ds, v, 0.25, full, progress=False)
    assert r.rel is not None


def test_train_reader_learns_a_trivial_task():
    ds = _synthetic(M=30)
    # obj answer = whether the item has a needle frame whose tokens are shifted far from the background
    for i in range(len(ds)):
        if len(ds.frames[i]):
            ds.x[i] = (ds.x[i].float() + 4.0).half()
    ds.answers = torch.tensor([[int(len(f) > 0), -1, -1] for f in ds.frames])
    ds.needle_cells = [torch.ones(len(f), ds.base_x.shape[2], dtype=torch.bool) for f in ds.frames]  # exercises the attention loss
    _, F, N, d = ds.base_x.shape
    cfg = RD.ReaderConfig(dim=d, hidden=16, num_frames=F, num_cells=N, num_classes=(2, 4, 4), epochs=30, batch_size=10, lr=1e-2)
    reader = RD.train(ds, cfg, progress=False, log=None)
    assert RD.accuracy(RD.predict_full(reader, ds), ds.answers)["obj"] == 1.0
