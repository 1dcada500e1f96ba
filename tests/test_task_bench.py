"""Fast checks of the needle task benchmark (benchmarks/needle): paste, items, split, reader, evaluation, statistics."""

import math

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


def _needle_specs(cfg, n=120, size=(60, 80)):
    specs = [s for s in (D.sample_item(cfg, "train", i, [0], {0: size}) for i in range(n)) if s.kind == "single"]
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
        obj, quarter, quadrant, order, count = spec.answers
        assert order == -1 and count == -1
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
    assert all(s.answers[1:] == (-1, -1, -1, -1) and s.answers[0] == len(cfg.classes) for s in nones)


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
    val_videos = {c.video for c in clips if c.split == "val"}
    assert train_videos and test_videos and len(val_videos) == 1
    assert not train_videos & test_videos and not val_videos & (train_videos | test_videos)
    if not all((D.VIDEO_DIR / v).exists() for v in D.VIDEOS):
        pytest.skip("benchmark videos not present")
    specs = D.item_specs(cfg, {"train": 40, "val": 20, "test": 40, "persist": 5, "heldout": 40, "test2": 40})
    assert {clips[s.clip].video for s in specs["train"]} <= train_videos
    # heldout: the training videos' clips, but needle draws of its own (no item repeats a train item)
    assert {clips[s.clip].video for s in specs["heldout"]} <= train_videos
    strip = lambda sp: {k: v for k, v in sp.to_dict().items() if k not in ("split", "index")}  # noqa: E731
    train_draws = [strip(sp) for sp in specs["train"]]
    assert not any(strip(sp) in train_draws for sp in specs["heldout"])
    assert {clips[s.clip].video for s in specs["val"]} <= val_videos
    assert {clips[s.clip].video for s in specs["test"]} <= test_videos
    assert {clips[s.clip].video for s in specs["persist"]} <= test_videos
    # test2: a fresh draw on the test videos (no item repeats a test item)
    assert {clips[s.clip].video for s in specs["test2"]} <= test_videos
    test_draws = [strip(sp) for sp in specs["test"]]
    assert not any(strip(sp) in test_draws for sp in specs["test2"])
    assert specs["train"][:10] == D.item_specs(cfg, {"train": 10})["train"]  # prefix-stable


def test_temporal_items_order_count_persist():
    cfg = D.GenConfig()
    H, W = 60, 80
    specs = [D.sample_item(cfg, "val", i, [0], {0: (H, W)}) for i in range(400)]
    kinds = {k: [s for s in specs if s.kind == k] for k in D.KINDS}
    assert len(kinds["single"]) > 150 and len(kinds["order"]) > 70 and len(kinds["count"]) > 70 and not kinds["persist"]
    qi = {q: i for i, q in enumerate(D.QUESTIONS)}
    for s in kinds["order"]:
        a, b = s.frame_cls
        t1, t2 = s.frames
        assert a != b and t2 - t1 >= cfg.min_gap and len(s.boxes) == 2
        assert s.answers[qi["order"]] == a == s.cls
        assert [v for i, v in enumerate(s.answers) if i != qi["order"]] == [-1] * 4
        sup = s.supervision()
        assert sup[0, qi["order"]] and not sup[1].any() and sup[0].sum() == 1
    counts = [s.answers[qi["count"]] for s in kinds["count"]]
    assert set(counts) == {0, 1}
    for s in kinds["count"]:
        n = len(s.frames)
        assert s.answers[qi["count"]] == n - 1 and len(set(s.frame_cls)) == 1
        if n == 2:
            assert s.frames[1] - s.frames[0] >= cfg.min_gap
        assert s.supervision()[:, qi["count"]].all() and s.supervision().sum() == n
    for s in kinds["single"]:
        if s.cls >= 0:
            assert s.supervision()[:, :3].all() and not s.supervision()[:, 3:].any()
    # pasting an order item puts each class in its own frame
    frames = np.zeros((cfg.num_frames, H, W, 3), np.uint8)
    s = kinds["order"][0]
    out = D.paste(frames, s)
    for k, c in enumerate(s.frame_cls):
        x0, y0, w, h = s.boxes[k]
        np.testing.assert_array_equal(out[k, y0:y0 + h, x0:x0 + w], D.needle_image(cfg.classes[c], w, h))
    # persist split: one needle over 6-12 consecutive frames, single-kind questions
    ps = [D.sample_item(cfg, "persist", i, [0], {0: (H, W)}) for i in range(20)]
    for s in ps:
        assert s.kind == "persist" and cfg.persist_frames[0] <= len(s.frames) <= cfg.persist_frames[1]
        assert list(s.frames) == list(range(s.frames[0], s.frames[-1] + 1)) and s.answers[qi["obj"]] == s.cls


def _synthetic(M=24, C=3, F=8, N=16, d=32, seed=0, Q=5):
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
                       torch.zeros(M, Q, dtype=torch.long), (4, 4))


def _reader(ds):
    torch.manual_seed(0)
    _, F, N, d = ds.base_x.shape
    return RD.Reader(RD.ReaderConfig(dim=d, hidden=16, num_frames=F, num_cells=N, num_classes=(5, 4, 4, 4, 2))).eval()


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
    assert together.shape == (3, 5) and torch.equal(together, alone)


def test_evaluation_identity_is_100_percent_and_compression_runs():
    ds = _synthetic()
    reader = _reader(ds)
    ds.answers = RD.predict_full(reader, ds)  # answers = the reader's own full-token answers: full acc = 100%
    full = RD.accuracy(ds.answers, ds.answers)
    r = E.evaluate(reader, ds, E.Variant("aot", "aot"), 1.0, full, progress=False)
    assert r.rel == {"obj": 100.0, "quarter": 100.0, "quadrant": 100.0, "order": 100.0, "count": 100.0, "mean": 100.0}
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
    ds.answers = torch.tensor([[int(len(f) > 0), -1, -1, -1, -1] for f in ds.frames])
    ds.needle_cells = [torch.ones(len(f), ds.base_x.shape[2], dtype=torch.bool) for f in ds.frames]  # exercises the attention loss
    _, F, N, d = ds.base_x.shape
    cfg = RD.ReaderConfig(dim=d, hidden=16, num_frames=F, num_cells=N, num_classes=(2, 4, 4, 2, 2), epochs=30, batch_size=10, lr=1e-2)
    reader = RD.train(ds, cfg, progress=False, log=None)
    assert RD.accuracy(RD.predict_full(reader, ds), ds.answers)["obj"] == 1.0


def test_count_feature_is_log_effective_frames():
    ds = _synthetic()
    reader = _reader(ds)
    h = 16
    pooled = torch.zeros(2, 5, h)
    mass = torch.zeros(2, 8, 5)
    mass[0, 3] = 1.0  # all attention on one frame
    mass[1, 2] = mass[1, 6] = 0.5  # split over two frames
    with torch.no_grad():
        for head in reader.heads:  # read the extra input straight through
            head.weight.zero_()
            head.bias.zero_()
            head.weight[0, h] = 1.0
        out = reader.heads_of(pooled, mass)
    assert abs(float(out[0][0, 0])) < 1e-6 and abs(float(out[0][1, 0]) - math.log(2)) < 1e-6
    # the generic forward computes the per-frame mass from the tokens' frames
    x = torch.randn(1, 6, ds.base_x.shape[-1])
    fr = torch.tensor([[0, 0, 1, 1, 5, 5]])
    with torch.no_grad():
        reader.query.weight.zero_()
        reader.query.bias.zero_()  # uniform attention: mass 1/3 on each of 3 frames
        out = reader(x, fr, torch.zeros_like(fr))
    assert abs(float(out[0][0, 0]) - math.log(3)) < 1e-5


def test_attention_loss_with_partial_supervision_is_finite():
    ds = _synthetic(M=12)
    ds.needle_cells = [torch.ones(len(f), ds.base_x.shape[2], dtype=torch.bool) for f in ds.frames]
    # only the `count` question is supervised, on items with two needle frames; others none
    ds.sup = [torch.zeros(len(f), 5, dtype=torch.bool) for f in ds.frames]
    for i, f in enumerate(ds.frames):
        if len(f) == 2:
            ds.sup[i][:, 4] = True
    reader = _reader(ds).train()
    logits, loss = RD.full_logits(reader, ds, torch.arange(12), attn_loss=True)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in reader.parameters() if p.grad is not None)
    ds.sup = [torch.zeros(len(f), 5, dtype=torch.bool) for f in ds.frames]  # nothing supervised: no loss
    _, loss = RD.full_logits(reader, ds, torch.arange(12), attn_loss=True)
    assert loss is None


def test_item_scores_paired_stats_and_groups():
    g = torch.Generator().manual_seed(0)
    M = 200
    answers = torch.full((M, 5), -1)
    answers[:100, :3] = 1  # single items: 3 questions
    answers[100:150, 3] = 1  # order
    answers[150:, 4] = 1  # count
    ca = torch.where(answers >= 0, (torch.rand(M, 5, generator=g) < 0.8).int(), torch.full((M, 5), -1, dtype=torch.int))
    cb = torch.where(answers >= 0, (torch.rand(M, 5, generator=g) < 0.6).int(), torch.full((M, 5), -1, dtype=torch.int))
    acc = RD.accuracy(torch.where(ca == 1, answers, 1 - answers), answers)
    full = {q: 0.9 for q in D.QUESTIONS}
    rel = E.relative(acc, full)
    assert abs(float(E.item_scores(ca.tolist(), full).sum()) - rel["mean"]) < 1e-5
    assert abs(float(E.item_scores(ca.tolist()).sum()) - 100 * acc["mean"]) < 1e-5
    d, se = E.paired_diff(ca.tolist(), ca.tolist(), full)
    assert d == 0 and se == 0
    d, se = E.paired_diff(ca.tolist(), cb.tolist(), full)
    rel_b = E.relative(RD.accuracy(torch.where(cb == 1, answers, 1 - answers), answers), full)
    assert abs(d - (rel["mean"] - rel_b["mean"])) < 1e-5 and 0 < se < abs(d)
    # items needed: 2 s.e. at n items; a 4x smaller difference needs 16x the items
    assert E.items_needed(4.0, 2.0, 100) == 100 and E.items_needed(1.0, 2.0, 100) == 1600
    assert E.items_needed(0.0, 1.0, 100) is None
    groups = ["a"] * 120 + ["b"] * 80
    ga = E.group_accuracy(ca.tolist(), groups)
    assert ga["a"]["n"] == 120 and ga["b"]["n"] == 80 and "count" not in ga["a"] and "obj" not in ga["b"]
    c = torch.tensor(ca.tolist())[:100, 0]
    assert abs(ga["a"]["obj"] - 100 * float(c.float().mean())) < 1e-5


def test_driver_helpers_prefix_limits_seed_noise():
    import task_benchmark as TB

    correct = [[1, 0, 1, -1, -1], [0, 0, 1, -1, -1], [-1, -1, -1, 1, -1], [-1, -1, -1, -1, 0]]
    acc = TB.prefix_accuracy(correct, 2)
    assert acc["obj"] == 0.5 and acc["quarter"] == 0.0 and acc["quadrant"] == 1.0
    assert math.isnan(acc["order"]) and acc["mean"] == 0.5
    acc4 = TB.prefix_accuracy(correct, 4)
    assert acc4["order"] == 1.0 and acc4["count"] == 0.0
    assert TB.parse_limit("fastvid=150") == ("fastvid", 150) and TB.parse_limit("a=b=3") == ("a=b", 3)
    with pytest.raises(SystemExit):
        TB.parse_limit("fastvid")
    rs = [E.Result(lab, 0.1, {}, {"mean": m}) for lab, m in (("random", 80.0), ("random@1", 84.0), ("random@2", 82.0), ("aot", 99.0))]
    text, data = TB.seed_noise(rs, [0.1])
    assert data[0.1]["n_seeds"] == 3 and abs(data[0.1]["mean"] - 82.0) < 1e-9 and abs(data[0.1]["std"] - 2.0) < 1e-9
    assert "80.0 - 84.0" in text


def test_default_data_keys_are_stable():
    """The cache folder names of the default data (the ones every README number was measured on):
    adding a GenConfig field must not change them (aspect_ref is left out of the key when unset).
    Change these literals only on purpose: it invalidates every cached item, reader and result."""
    cfg = D.GenConfig()
    assert cfg.item_key() == "0d98459c04b3"
    assert cfg.base_key() == "e8bb4f5ea999"
    assert D.GenConfig(aspect_ref=1.35).item_key() != cfg.item_key()
    assert D.GenConfig(aspect_ref=1.35).base_key() == cfg.base_key()  # same encoded base clips


@pytest.mark.parametrize("ref", [None, 1.35, 2.0])
def test_aspect_ref_sets_the_needle_shape_after_the_square_resize(ref):
    H, W = 272, 640  # bikes
    cfg = D.GenConfig(aspect_ref=ref)
    aspects = [D.needle_source(c).shape[0] / D.needle_source(c).shape[1] for c in cfg.classes]
    specs = [D.sample_item(cfg, "val", i, [0], {0: (H, W)}, aspects) for i in range(200)]
    boxes = [(s.frame_cls[k], b) for s in specs if s.cls >= 0 for k, b in enumerate(s.boxes)]
    assert len(boxes) > 100
    for cls, (x0, y0, w, h) in boxes:
        assert 0 <= y0 and y0 + h <= H and 0 <= x0 and x0 + w <= W
        raw = h / w  # the needle's aspect in pixels
        shown = (h / H) / (w / W)  # its aspect after resizing the frame to a square
        want = aspects[cls] if ref is None else aspects[cls] * ref * H / W
        if h < H - 2:  # not clamped to the frame's height
            assert raw == pytest.approx(want, abs=1.0 / w + 1e-9 + want / w)
        else:
            assert w == round(h / want)
        if ref is not None:
            assert shown == pytest.approx(aspects[cls] * ref, rel=0.05 + 2.0 / min(w, h))


def _on_clips(clip_ids, d=4):
    """A NeedleSet whose items sit on the given base clips (indices into D.base_clips())."""
    M, C = len(clip_ids), len(D.base_clips())
    g = torch.Generator().manual_seed(len(clip_ids))
    return D.NeedleSet(torch.zeros(C, 2, 3, d).half(), torch.zeros(C, 2, 3), torch.zeros(C, 2, 3),
                       torch.tensor(clip_ids), [torch.zeros(0, dtype=torch.long)] * M, [torch.zeros(0, 3, d).half()] * M,
                       [torch.zeros(0, 3)] * M, [torch.zeros(0, 3)] * M, torch.randint(0, 2, (M, 5), generator=g), (1, 3),
                       [f"spec{i}" for i in range(M)])


def test_concat_and_leave_one_video_out_folds():
    clips = D.base_clips()
    by_video = {}
    for i, c in enumerate(clips):
        by_video.setdefault(c.video, []).append(i)
    tr = _on_clips(by_video["box.mp4"][:3] + by_video["Megamind.avi"][:4])
    va = _on_clips(by_video["bikes.mp4"][:5])
    ho = _on_clips(by_video["Megamind.avi"][2:5] + by_video["box.mp4"][1:3])
    # concat needs one set of base clips; then it keeps the order of the sets and of their items
    va.base_x, ho.base_x = tr.base_x, tr.base_x
    cat = D.concat([tr, va, ho])
    assert len(cat) == 7 + 5 + 5 and torch.equal(cat.clip, torch.cat([tr.clip, va.clip, ho.clip]))
    assert torch.equal(cat.answers, torch.cat([tr.answers, va.answers, ho.answers])) and cat.specs[7] == va.specs[0]
    with pytest.raises(ValueError, match="base clips"):
        D.concat([tr, _on_clips([0])])
    sets = {"train": tr, "val": va, "heldout": ho, "test": _on_clips(by_video["bigbuckbunny.mp4"][:2])}
    for name, held_video in (("megamind", "Megamind.avi"), ("box.mp4", "box.mp4"), ("Bikes", "bikes.mp4")):
        train, held = D.fold(sets, name)
        vids_train = {clips[int(c)].video for c in train.clip}
        assert {clips[int(c)].video for c in held.clip} == {held_video}
        assert held_video not in vids_train and not vids_train & {"bigbuckbunny.mp4", "carphone_pristine.mp4"}
        n_held = sum(clips[int(c)].video == held_video for ds in (tr, va, ho) for c in ds.clip)
        assert len(held) == n_held and len(train) + len(held) == 17  # every non-test item, once
    with pytest.raises(ValueError, match="bigbuckbunny.*cannot|choose one of"):
        D.fold(sets, "bigbuckbunny")
    with pytest.raises(ValueError, match="not built"):
        D.fold({"train": tr}, "box")


def test_paired_diff_avg_averages_items_first():
    g = torch.Generator().manual_seed(3)
    M = 150
    answers = torch.full((M, 5), -1)
    answers[:, :3] = 1
    corr = [torch.where(answers >= 0, (torch.rand(M, 5, generator=g) < p).int(), -1).tolist() for p in (0.8, 0.7, 0.6, 0.75)]
    full = {q: 0.9 for q in D.QUESTIONS}
    pairs = [(corr[0], corr[1]), (corr[2], corr[3])]
    d, se = E.paired_diff_avg(pairs, full)
    d1, _ = E.paired_diff(*pairs[0], full)
    d2, _ = E.paired_diff(*pairs[1], full)
    assert d == pytest.approx((d1 + d2) / 2)
    # plain loop: per item, the mean over the pairs of (score a - score b), then sqrt(M) * std
    z = []
    for i in range(M):
        per = []
        for a, b in pairs:
            za = sum(100.0 / (3 * M * 0.9) * (a[i][q] == 1) for q in range(3))
            zb = sum(100.0 / (3 * M * 0.9) * (b[i][q] == 1) for q in range(3))
            per.append(za - zb)
        z.append(sum(per) / len(per))
    mean = sum(z) / M
    assert se == pytest.approx(math.sqrt(M) * math.sqrt(sum((v - mean) ** 2 for v in z) / (M - 1)))
    assert E.paired_diff_avg(pairs[:1], full) == pytest.approx(E.paired_diff(*pairs[0], full))
    with pytest.raises(ValueError):
        E.paired_diff_avg([], full)


@pytest.mark.parametrize("argv, msg", [
    (["--fold", "box", "--split", "val"], "leave out --split"),
    (["--fold", "bigbuckbunny"], "cannot be a fold"),
    (["--fold", "nosuch"], "choose one of"),
    (["--fold", "box", "--val-aspect-ref", "1.35"], "leave out --val-aspect-ref"),
    (["--split", "test3"], "unknown split"),
])
def test_driver_rejects_bad_fold_and_split_before_any_work(argv, msg, tmp_path):
    import task_benchmark as TB

    with pytest.raises(SystemExit, match=msg):
        TB.main(argv + ["--cache", str(tmp_path), "--no-encode"])
    assert not any(tmp_path.iterdir())  # nothing built or cached


def test_fold_builds_only_the_splits_a_fold_reads(monkeypatch, tmp_path):
    import task_benchmark as TB

    asked = {}

    def fake_build(cfg, counts, **kw):
        asked.update(counts)
        raise RuntimeError("stop after build was asked")

    monkeypatch.setattr(TB.D, "build", fake_build)
    with pytest.raises(RuntimeError, match="stop after build"):
        TB.main(["--fold", "box", "--cache", str(tmp_path), "--n-heldout", "7"])
    assert asked == {"train": D.DEFAULT_COUNTS["train"], "val": D.DEFAULT_COUNTS["val"], "heldout": 7}
    asked.clear()
    with pytest.raises(RuntimeError, match="stop after build"):
        TB.main(["--split", "val", "--cache", str(tmp_path)])
    assert set(asked) == set(D.SPLITS)  # a split run still builds every split (their full-token accuracy is printed)
