"""Task benchmark v3 data: needle items on real DINOv2 tokens at a real video LLM's cell size.

What changed from v2 (benchmarks/needle/data.py, whose decoding, needle images and pasting are
reused unchanged) and why (issue 22: v2's reader read no video it was not trained on):

* Token grid: DINOv2 ViT-S/14 at 224 px (16 x 16 patches) pooled 2 x 2 (bilinear, = a 2 x 2
  mean) to 8 x 8 = 64 tokens a frame, i.e. one token per 28 px of the 224 px square, the cell a
  token of LLaVA-OneVision / Qwen-VL style models covers (14 px patches pooled 2 x 2).
* Splits by video, three roles: ``train`` = box, Megamind, bikes (the readers' data; leave-one-
  video-out folds over these three fit the "none" threshold), ``val`` = carphone_pristine (every
  choice is made here), ``test`` = bigbuckbunny (reported once).  No frame of a val/test video is
  ever seen by a reader.
* Needles look alike on every video: a needle's size is drawn in the 224 px square the ViT sees
  (side 22-40% of the square, its aspect kept there), then mapped to raw pixels, so the squash
  resize does not stretch it differently per video (v2 stretched bikes' needles 2.35 x).
* Needle durations from 1 to 12 frames (``DURATIONS``) for val/test single-object items, static
  or moving at a constant velocity (``motion``); train items use 1-4 frames (the per-token
  classifier does not need long needles, and encoding is the cost).
* Token-level labels from the geometry (``cell_labels``): a cell covered by the needle box at
  least ``COVER_POS`` gets the needle's class, a cell it does not touch is background, cells
  touched less than that are left out of the loss (-1).

Kinds and questions are v2's: ``single`` (obj: class or none, quarter of the first needle frame,
quadrant of the needle centre), ``order`` (which of two classes came first; each shown 1-2
frames), ``count`` (one class shown once or twice, one frame each, at least one frame apart).

Item i of a split is drawn from ``np.random.default_rng([seed, split, i])`` (prefix-stable).  Base
clips are encoded once; an item stores only its needle frames.  Cache: ``benchmarks/.cache/needle3``.
Encoding can be split over processes (``build(..., shard=(k, n))``): each encodes every n-th clip/item.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sys

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for v2's package

from needle import data as V2  # decoding, needle images and pasting are v2's, unchanged

REPO = V2.REPO
VIDEO_DIR = V2.VIDEO_DIR
CACHE_DIR = REPO / "benchmarks" / ".cache" / "needle3"
CLASSES = V2.CLASSES
QUESTIONS = V2.QUESTIONS  # ("obj", "quarter", "quadrant", "order", "count")
VIDEOS = {  # file -> split
    "box.mp4": "train",
    "Megamind.avi": "train",
    "bikes.mp4": "train",
    "carphone_pristine.mp4": "val",
    "bigbuckbunny.mp4": "test",
}
SPLITS = {"train": 0, "val": 1, "test": 2}
# base clips per split: (range, mirror); train gets more backgrounds (the readers learn "background" there)
CLIP_VARIANTS = {
    "train": (("full", False), ("first", False), ("second", False), ("full", True)),
    "val": (("full", False), ("first", False), ("second", False)),
    "test": (("full", False), ("first", False), ("second", False)),
}
DURATIONS = (1, 2, 3, 4, 8, 12)  # val/test single items, uniform
TRAIN_DURATIONS = (1, 2, 3, 4)
COVER_POS = 0.5  # cell coverage from which a cell is labelled with the needle class
KINDS = ("single", "order", "count")
BASE_VERSION = 1


@dataclass(frozen=True)
class Config:
    seed: int = 0
    num_frames: int = 32
    image_size: int = 224
    pool: int = 2  # 16 x 16 -> 8 x 8
    layers: tuple[int, int] = (-2, 5)
    score: str = "received"
    classes: tuple[str, ...] = CLASSES
    side_range: tuple[float, float] = (0.22, 0.40)  # needle width, fraction of the 224 px square
    kind_probs: tuple[float, float, float] = (0.6, 0.2, 0.2)
    p_move: float = 0.5  # single items: probability that the needle moves
    speed: float = 0.03  # max per-frame velocity component, fraction of the frame side
    min_gap: int = 2
    version: int = 1

    def base_key(self) -> str:
        keep = {k: getattr(self, k) for k in ("num_frames", "image_size", "pool", "layers", "score")}
        return _hash({"base": keep, "version": BASE_VERSION})

    def item_key(self) -> str:
        return _hash({"items": asdict(self), "videos": VIDEOS, "variants": CLIP_VARIANTS, "durs": DURATIONS,
                      "train_durs": TRAIN_DURATIONS})


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def base_clips() -> list[V2.BaseClip]:
    """Background clips in a fixed order (indexes ``Sets.base_x``)."""
    return [V2.BaseClip(v, s, r, m) for v, s in VIDEOS.items() for r, m in CLIP_VARIANTS[s]]


@dataclass(frozen=True)
class Spec:
    split: str
    index: int
    clip: int
    kind: str
    cls: int  # single: class or -1 (none); order: first class; count: the class
    frames: tuple[int, ...] = ()
    frame_cls: tuple[int, ...] = ()
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # (x0, y0, w, h) raw pixels per needle frame
    answers: tuple[int, ...] = (0, -1, -1, -1, -1)
    duration: int = 0  # single: frames the needle is shown (0: none)
    moving: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _size(rng, cfg: Config, H: int, W: int, aspect: float) -> tuple[int, int]:
    """Raw (w, h) of a needle whose shown size in the square is side s (of the width) x s * aspect."""
    s = float(rng.uniform(*cfg.side_range))
    w = max(2, int(round(s * W)))
    h = max(2, int(round(min(0.95, s * aspect) * H)))
    return w, h


def _place(rng, W, H, w, h, n, vel) -> tuple[list, int]:
    """Boxes over n frames at constant velocity vel (px/frame), centre in one quadrant throughout."""
    for _ in range(2000):
        x, y = float(rng.integers(0, W - w + 1)), float(rng.integers(0, H - h + 1))
        boxes = []
        ok = True
        for t in range(n):
            xt, yt = x + vel[0] * t, y + vel[1] * t
            if not (0 <= xt <= W - w and 0 <= yt <= H - h):
                ok = False
                break
            boxes.append((int(round(xt)), int(round(yt)), w, h))
        if not ok:
            continue
        quads = {V2._quadrant(*b, W, H) for b in boxes}
        if len(quads) == 1:
            return boxes, quads.pop()
    # too fast for this frame: fall back to a static needle
    return _place(rng, W, H, w, h, n, (0.0, 0.0)) if vel != (0.0, 0.0) else (_ for _ in ()).throw(
        RuntimeError("could not place a needle"))


def sample_item(cfg: Config, split: str, index: int, clip_ids: list[int], sizes: dict[int, tuple[int, int]],
                aspects: list[float]) -> Spec:
    rng = np.random.default_rng([cfg.seed, SPLITS[split], index])
    K, F, Q = len(cfg.classes), cfg.num_frames, len(QUESTIONS)
    clip = int(clip_ids[int(rng.integers(len(clip_ids)))])
    H, W = sizes[clip]

    def answers(**kw):
        a = [-1] * Q
        for k, v in kw.items():
            a[QUESTIONS.index(k)] = int(v)
        return tuple(a)

    kind = KINDS[int(rng.choice(3, p=np.asarray(cfg.kind_probs) / sum(cfg.kind_probs)))]
    if kind == "single":
        if rng.random() < 1.0 / (K + 1):
            return Spec(split, index, clip, kind, -1, answers=answers(obj=K))
        cls = int(rng.integers(K))
        durs = TRAIN_DURATIONS if split == "train" else DURATIONS
        n = int(durs[int(rng.integers(len(durs)))])
        start = int(rng.integers(0, F - n + 1))
        w, h = _size(rng, cfg, H, W, aspects[cls])
        moving = bool(n > 1 and rng.random() < cfg.p_move)
        vel = (float(rng.uniform(-1, 1) * cfg.speed * W), float(rng.uniform(-1, 1) * cfg.speed * H)) if moving else (0.0, 0.0)
        boxes, quad = _place(rng, W, H, w, h, n, vel)
        moving = moving and boxes[0][:2] != boxes[-1][:2]
        return Spec(split, index, clip, kind, cls, tuple(range(start, start + n)), (cls,) * n, tuple(boxes),
                    answers(obj=cls, quarter=start * 4 // F, quadrant=quad), n, moving)
    if kind == "order":
        a, b = (int(v) for v in rng.choice(K, size=2, replace=False))
        la, lb = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        t1 = int(rng.integers(0, F - la - lb - cfg.min_gap + 2))
        t2 = int(rng.integers(t1 + la + cfg.min_gap - 1, F - lb + 1))
        frames, fcls, boxes = [], [], []
        for c, t0, ln in ((a, t1, la), (b, t2, lb)):
            bx, _ = _place(rng, W, H, *_size(rng, cfg, H, W, aspects[c]), ln, (0.0, 0.0))
            frames += list(range(t0, t0 + ln))
            fcls += [c] * ln
            boxes += bx
        return Spec(split, index, clip, kind, a, tuple(frames), tuple(fcls), tuple(boxes), answers(order=a))
    cls = int(rng.integers(K))
    t1, t2 = V2._two_frames(rng, F, cfg.min_gap)
    twice = bool(rng.random() < 0.5)
    frames = (t1, t2) if twice else ((t1,) if rng.random() < 0.5 else (t2,))
    w, h = _size(rng, cfg, H, W, aspects[cls])
    boxes = [_place(rng, W, H, w, h, 1, (0.0, 0.0))[0][0] for _ in frames]
    return Spec(split, index, clip, kind, cls, tuple(frames), (cls,) * len(frames), tuple(boxes), answers(count=int(twice)))


def cell_coverage(box, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """(gh*gw,) fraction of each grid cell covered by box (x0, y0, w, h) on a frame of size (H, W)."""
    H, W = size
    gh, gw = grid
    x0, y0, w, h = box
    ex = torch.linspace(0, W, gw + 1, dtype=torch.float64)
    ey = torch.linspace(0, H, gh + 1, dtype=torch.float64)
    ox = (torch.minimum(ex[1:], torch.tensor(float(x0 + w))) - torch.maximum(ex[:-1], torch.tensor(float(x0)))).clamp_min(0)
    oy = (torch.minimum(ey[1:], torch.tensor(float(y0 + h))) - torch.maximum(ey[:-1], torch.tensor(float(y0)))).clamp_min(0)
    return ((oy[:, None] / (H / gh)) * (ox[None, :] / (W / gw))).flatten().float()


def cell_labels(spec: Spec, size, grid, background: int) -> Tensor:
    """(n, gh*gw) long per needle frame: class where coverage >= COVER_POS, ``background`` where 0, -1 between."""
    out = torch.full((len(spec.frames), grid[0] * grid[1]), background, dtype=torch.long)
    for k, box in enumerate(spec.boxes):
        cov = cell_coverage(box, size, grid)
        out[k][cov > 0] = -1
        out[k][cov >= COVER_POS] = spec.frame_cls[k]
    return out


def item_range(n) -> range:
    """Item indexes of a count: ``n`` (items 0..n-1) or ``(start, stop)`` (a later draw: items are
    drawn per index, so indexes >= an earlier count are items no earlier run has seen)."""
    if isinstance(n, int):
        return range(n)
    start, stop = (int(v) for v in n)
    if not 0 <= start < stop:
        raise ValueError(f"item range must be (start, stop) with 0 <= start < stop, got {n!r}")
    return range(start, stop)


def item_specs(cfg: Config, counts: dict[str, int | tuple[int, int]]) -> dict[str, list[Spec]]:
    clips = base_clips()
    vs = V2.video_sizes()
    sizes = {i: vs[c.video] for i, c in enumerate(clips)}
    aspects = [V2.needle_source(c).shape[0] / V2.needle_source(c).shape[1] for c in cfg.classes]
    out = {}
    for split, n in counts.items():
        ids = [i for i, c in enumerate(clips) if c.split == split]
        out[split] = [sample_item(cfg, split, i, ids, sizes, aspects) for i in item_range(n)]
    return out


@dataclass
class Sets:
    """Items of one split on shared base clips (see v2's NeedleSet; no per-item attention scores kept apart)."""

    base_x: Tensor  # (C, F, N, d) float16
    base_s: Tensor  # (C, F, N)
    base_ls: Tensor  # (C, F, N)
    specs: list[Spec]
    x: list[Tensor]  # per item (n_i, N, d) float16
    s: list[Tensor]
    ls: list[Tensor]
    labels: list[Tensor]  # per item (n_i, N) long: class / background K / -1
    grid: tuple[int, int] = (8, 8)
    clip_motion: dict = field(default_factory=dict)  # clip index -> mean cosine distance of consecutive frames' tokens

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def answers(self) -> Tensor:
        return torch.tensor([sp.answers for sp in self.specs], dtype=torch.long).reshape(-1, len(QUESTIONS))

    def full(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens (F, N, d) float32, scores (F, N), local scores (F, N) of item i."""
        sp = self.specs[i]
        x = self.base_x[sp.clip].float()
        s, ls = self.base_s[sp.clip].clone(), self.base_ls[sp.clip].clone()
        if sp.frames:
            f = list(sp.frames)
            x[f] = self.x[i].float()
            s[f] = self.s[i].float()
            ls[f] = self.ls[i].float()
        return x, s, ls

    def subset(self, idx) -> "Sets":
        idx = [int(i) for i in idx]
        return Sets(self.base_x, self.base_s, self.base_ls, [self.specs[i] for i in idx], [self.x[i] for i in idx],
                    [self.s[i] for i in idx], [self.ls[i] for i in idx], [self.labels[i] for i in idx], self.grid,
                    self.clip_motion)

    def video_of(self, i: int) -> str:
        return base_clips()[self.specs[i].clip].video


_MODEL = None


def _encode(cfg: Config, frames):
    global _MODEL
    from aot.models.dinov2 import encode_video, load_dinov2

    if _MODEL is None:
        _MODEL = load_dinov2()
    e = encode_video(_MODEL, frames, layers=cfg.layers, pool=cfg.pool, score=cfg.score, image_size=cfg.image_size,
                     batch_size=8, progress=False)
    return e.features.half(), e.scores.float(), e.local_scores.float(), e.grid


def _save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


DEFAULT_COUNTS = {"train": 240, "val": 300, "test": 400}


def build(cfg: Config = Config(), counts: dict[str, int] | None = None, *, cache_dir: Path = CACHE_DIR,
          encode: bool = True, shard: tuple[int, int] = (0, 1), progress: bool = True) -> dict[str, Sets] | None:
    """Load (encoding what is missing, ``shard`` = (k, n): only every n-th missing clip/item from k)
    the sets of ``counts``; returns None if this shard encoded but others still have work."""
    from aot.models.dinov2 import preprocess
    from tqdm.auto import tqdm

    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    clips = base_clips()
    base_dir = Path(cache_dir) / f"base-{cfg.base_key()}"
    item_dir = Path(cache_dir) / f"items-{cfg.item_key()}"
    specs = item_specs(cfg, counts)
    k, n = shard
    decoded: dict[int, np.ndarray] = {}

    def frames_of(c):
        if c not in decoded:
            decoded[c] = V2.decode_clip(clips[c], cfg.num_frames)
        return decoded[c]

    need_clips = {sp.clip for s in specs.values() for sp in s} | {i for i, c in enumerate(clips) if c.split == "train"}
    missing = [i for i in sorted(need_clips) if not (base_dir / f"{clips[i].name}.pt").exists()]
    todo = [sp for s in specs.values() for sp in s if sp.frames and not (item_dir / sp.split / f"{sp.index:05d}.pt").exists()]
    todo.sort(key=lambda sp: (SPLITS[sp.split], sp.index))  # train, then val, then test
    if (missing or todo) and not encode:
        raise FileNotFoundError(f"{len(missing)} base clips and {len(todo)} items are not cached under {cache_dir}")
    for i in tqdm(missing[k::n], desc="base clips", disable=not progress):
        x, s, ls, grid = _encode(cfg, frames_of(i))
        _save({"x": x, "s": s, "ls": ls, "grid": grid}, base_dir / f"{clips[i].name}.pt")
    mine = todo[k::n]
    bar = tqdm(total=len(mine), desc="needle items", disable=not progress)
    for g in range(0, len(mine), 4):
        chunk = mine[g: g + 4]
        pasted = [V2.paste(frames_of(sp.clip), _as_v2(sp), cfg.classes) for sp in chunk]
        x, s, ls, _ = _encode(cfg, torch.cat([preprocess(p, cfg.image_size) for p in pasted]))
        o = 0
        for sp, p in zip(chunk, pasted):
            m = len(p)
            _save({"x": x[o:o + m].clone(), "s": s[o:o + m].clone(), "ls": ls[o:o + m].clone(), "spec": sp.to_dict()},
                  item_dir / sp.split / f"{sp.index:05d}.pt")
            o += m
        bar.update(len(chunk))
        for c in list(decoded):  # keep memory bounded
            if len(decoded) > 12:
                del decoded[c]
    bar.close()
    if n > 1 and (any(not (base_dir / f"{clips[i].name}.pt").exists() for i in missing)
                  or any(not (item_dir / sp.split / f"{sp.index:05d}.pt").exists() for sp in todo)):
        return None
    if not item_dir.joinpath("config.json").exists():
        item_dir.mkdir(parents=True, exist_ok=True)
        item_dir.joinpath("config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return load(cfg, specs, base_dir, item_dir)


def _as_v2(sp: Spec) -> V2.ItemSpec:
    return V2.ItemSpec(sp.split, sp.index, sp.clip, sp.cls, sp.frames, sp.boxes, sp.answers, sp.kind, sp.frame_cls)


def load(cfg: Config, specs: dict[str, list[Spec]], base_dir: Path, item_dir: Path) -> dict[str, Sets]:
    clips = base_clips()
    base = {}
    for i, c in enumerate(clips):
        p = base_dir / f"{c.name}.pt"
        base[i] = torch.load(p, weights_only=True) if p.exists() else None
    ref = next(b for b in base.values() if b is not None)
    grid = tuple(ref["grid"])
    Fr, N, d = ref["x"].shape
    zeros = lambda *s: torch.zeros(*s)  # noqa: E731
    base_x = torch.stack([b["x"] if b is not None else zeros(Fr, N, d).half() for b in base.values()])
    base_s = torch.stack([b["s"] if b is not None else zeros(Fr, N) for b in base.values()])
    base_ls = torch.stack([b["ls"] if b is not None else zeros(Fr, N) for b in base.values()])
    # background motion of each clip: mean cosine distance between consecutive frames' tokens at one cell
    xn = torch.nn.functional.normalize(base_x.float(), dim=-1)
    motion = {i: float(1 - (xn[i, 1:] * xn[i, :-1]).sum(-1).mean()) for i in base if base[i] is not None}
    vs = V2.video_sizes()
    K = len(cfg.classes)
    out = {}
    for split, ss in specs.items():
        xs, s_, ls_, labs = [], [], [], []
        for sp in ss:
            if not sp.frames:
                xs.append(torch.zeros(0, N, d, dtype=torch.float16)), s_.append(zeros(0, N)), ls_.append(zeros(0, N))
                labs.append(torch.zeros(0, N, dtype=torch.long))
                continue
            dd = torch.load(item_dir / sp.split / f"{sp.index:05d}.pt", weights_only=True)
            if tuple(dd["spec"]["frames"]) != sp.frames or dd["spec"]["clip"] != sp.clip:
                raise RuntimeError(f"cached item {sp.split}/{sp.index} does not match its spec; clear {item_dir}")
            xs.append(dd["x"]), s_.append(dd["s"]), ls_.append(dd["ls"])
            labs.append(cell_labels(sp, vs[clips[sp.clip].video], grid, K))
        out[split] = Sets(base_x, base_s, base_ls, ss, xs, s_, ls_, labs, grid, motion)
    return out


if __name__ == "__main__":  # python benchmarks/needle3/data.py [K N [SPLIT=COUNT or SPLIT=START:STOP ...]]
    import time

    torch.set_num_threads(1)
    sh = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (0, 1)
    counts = dict(DEFAULT_COUNTS)
    for a in sys.argv[3:]:  # e.g. val=600 test=400:800 (the fresh test draw of issue 22)
        split, _, n = a.partition("=")
        counts[split] = tuple(int(v) for v in n.split(":")) if ":" in n else int(n)
    t = time.time()
    r = build(Config(), counts, shard=sh)
    print("done" if r is not None else "shard done, others pending", f"{time.time() - t:.0f} s", flush=True)
