"""Video needle-in-a-haystack items on real DINOv2 tokens.

Backgrounds ("base clips"): the five videos in ``../shared/data/videos`` (relative to the repo
root), 32 frames each sampled uniformly (lmms-eval's rule, ``aot.video.sample_indices``) over
three ranges -- the whole video, its first half and its second half -- and each of those also
mirrored left-right: 3 ranges x 2 = 6 clips per video, 30 clips.  The halves and mirrors are not
new content but give the reader other frame orders, speeds and layouts of the same scenes.

Split BY VIDEO: test = bigbuckbunny (animation, 1280x720) + carphone_pristine (low-res natural,
176x144); validation = bikes (natural street, 640x272), held out of the reader's training data;
train = box, Megamind (one natural, one animation).  No video, hence no background frame, is in
two of these splits, so the reader cannot memorise validation or test backgrounds.  The
``persist`` split draws from the test videos.  ``heldout`` is the exception on purpose: a second
validation instrument (added when the bikes validation and the test split disagreed about a
default, README), new items on the *training* videos' base clips drawn from their own random
stream, so the reader knows the backgrounds but never saw these needle placements (on bikes it
is near chance; here it can read).  ``test2`` is a second, fresh draw of test items (same test
videos, its own random stream), drawn after the first test set had been read to diagnose a
default: the headline is reported on it once.  Every default and benchmark choice is made on
val, heldout and the leave-one-video-out folds (``fold``) only.

Needles: 8 real photographs/drawings bundled in scikit-image's wheel (``skimage/data``; nothing
downloaded), see ``CLASSES``.  RGBA images are flattened onto white.  Needles are 12-25% of the
frame width wide (aspect kept) and pasted on the raw decoded frames, before DINOv2's
resize/normalisation.  An item is a base clip plus needles; its ``kind`` decides which:

* ``single`` (half of the items): with probability K/(K+1) one needle class in 2-3 consecutive
  frames at a random place, drifting by up to 2% of the width per frame (else no needle);
* ``order`` (a quarter): two different classes, one frame each, at least ``min_gap`` frames apart;
* ``count`` (a quarter): one class shown once or twice, one frame each, ``min_gap`` frames apart,
  at an independent place each time;
* ``persist`` (the ``persist`` split only, a probe): one needle in 6-12 consecutive frames,
  drifting, i.e. an object that stays on screen as objects in real videos do, unlike the flashes
  above; same questions as ``single``.

Questions (``QUESTIONS``; -1 = not asked of this item):

* ``obj`` (single/persist): which class (0..K-1) or K = "none";
* ``quarter`` (single/persist): which quarter of the 32 frames holds the first needle frame;
* ``quadrant`` (single/persist): 2x2 quadrant of the needle centre, row-major (0 TL, 1 TR, 2 BL,
  3 BR); placements whose centre crosses a mid-line while drifting are redrawn;
* ``order`` (order): the class of the needle that appeared first (0..K-1; chance 1/2 for a reader
  that recognises both);
* ``count`` (count): 0 = shown once, 1 = shown twice.

Item i of a split is drawn from ``np.random.default_rng([seed, split, i])``, so it does not
depend on how many items are generated.  Base clips are encoded once; an item stores only its
needle frames' tokens (frames are encoded independently by the ViT).  Everything is cached under
``benchmarks/.cache/needle`` in folders named by a hash of the parameters that produce them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[2]
VIDEO_DIR = REPO.parent / "shared" / "data" / "videos"
CACHE_DIR = REPO / "benchmarks" / ".cache" / "needle"

VIDEOS = {  # file -> split
    "bikes.mp4": "val",
    "box.mp4": "train",
    "Megamind.avi": "train",
    "bigbuckbunny.mp4": "test",
    "carphone_pristine.mp4": "test",
}
RANGES = ("full", "first", "second")
CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "camera", "horse", "retina")
SPLITS = {"train": 0, "test": 1, "val": 2, "persist": 3, "heldout": 4, "test2": 5}
CLIP_SPLIT = {"train": "train", "val": "val", "test": "test", "persist": "test", "heldout": "train",
              "test2": "test"}  # split -> base clips it draws on
BASE_VERSION = 1  # bump to re-encode the base clips (GenConfig.version only re-draws the items)
QUESTIONS = ("obj", "quarter", "quadrant", "order", "count")
KINDS = ("single", "order", "count", "persist")
FOLD_SPLITS = ("train", "val", "heldout")  # the items leave-one-video-out folds are made of (no test video)


@dataclass(frozen=True)
class GenConfig:
    """Every parameter that changes the generated data (hashed into the cache folder names)."""

    seed: int = 0
    num_frames: int = 32
    classes: tuple[str, ...] = CLASSES
    p_none: float | None = None  # None: 1 / (K + 1), so "none" is as frequent as each class
    width_range: tuple[float, float] = (0.12, 0.25)  # needle width, fraction of the frame width
    needle_frames: tuple[int, int] = (2, 3)  # consecutive frames holding the needle, inclusive
    drift: float = 0.02  # max per-frame shift of the needle, fraction of the frame width
    image_size: int = 224
    layers: tuple[int, int] = (-2, 5)
    pool: int = 1
    score: str = "received"
    kind_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)  # single, order, count (train/val/test)
    min_gap: int = 2  # order/count: frames between the two needle frames, at least min_gap - 1
    persist_frames: tuple[int, int] = (6, 12)  # persist split: consecutive needle frames, inclusive
    version: int = 2
    # None: a needle keeps its aspect in raw pixels, so the square resize stretches it by the
    # video's W/H. A number r: its raw height is scaled so that after the resize it looks as it does
    # on a frame with W/H = r (the training videos have r of 1.33-1.36; bikes has 2.35).
    aspect_ref: float | None = None

    @property
    def none_prob(self) -> float:
        return 1.0 / (len(self.classes) + 1) if self.p_none is None else self.p_none

    def base_key(self) -> str:
        keep = {k: v for k, v in asdict(self).items() if k in ("num_frames", "image_size", "layers", "pool", "score")}
        # the video files, not their split: moving a video between splits keeps its encoded clips
        return _hash({"base": keep, "videos": sorted(VIDEOS), "ranges": RANGES, "version": BASE_VERSION})

    def item_key(self) -> str:
        d = asdict(self)
        if d["aspect_ref"] is None:  # added later: left out when unset, so existing caches keep their keys
            del d["aspect_ref"]
        return _hash({"items": d, "videos": VIDEOS, "ranges": RANGES})


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- base clips


@dataclass(frozen=True)
class BaseClip:
    video: str
    split: str
    range: str  # "full" | "first" | "second"
    mirror: bool

    @property
    def name(self) -> str:
        return f"{Path(self.video).stem}-{self.range}{'-mirror' if self.mirror else ''}"


def base_clips() -> list[BaseClip]:
    """The 30 background clips in a fixed order (the order indexes ``NeedleSet.base_*``)."""
    return [BaseClip(v, s, r, m) for v, s in VIDEOS.items() for r in RANGES for m in (False, True)]


def decode_clip(clip: BaseClip, num_frames: int = 32, video_dir: Path = VIDEO_DIR) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a base clip."""
    from aot.video import _decode_wanted, read_frames, sample_indices

    path = Path(video_dir) / clip.video
    full = read_frames(path, num_frames)
    if clip.range == "full":
        frames = full.frames
    else:
        total = full.total_frames
        lo, hi = (0, total // 2) if clip.range == "first" else (total // 2, total)
        idx = lo + sample_indices(hi - lo, num_frames)
        kept = _decode_wanted(path, idx)[0]  # (kept, decoded, errors, corrupt)
        frames = np.stack([kept[int(i)] for i in idx])
    if clip.mirror:
        frames = frames[:, :, ::-1]
    return np.ascontiguousarray(frames)


# --------------------------------------------------------------------------- needles


def needle_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ImportError("the needle images come from scikit-image's bundled data: pip install scikit-image")
    return Path(spec.origin).parent / "data"


@lru_cache(maxsize=None)
def needle_source(name: str) -> np.ndarray:
    """Full-size RGB uint8 image of a needle class (RGBA flattened onto white, grey -> RGB)."""
    from PIL import Image

    files = sorted(p for p in needle_dir().iterdir() if p.stem == name and p.suffix in (".png", ".jpg"))
    if not files:
        raise FileNotFoundError(f"needle image {name!r} not found in {needle_dir()}")
    im = Image.open(files[0])
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("RGB"))


@lru_cache(maxsize=4096)
def needle_image(name: str, w: int, h: int) -> np.ndarray:
    """Needle ``name`` resized to (h, w, 3) uint8 (Lanczos)."""
    from PIL import Image

    src = needle_source(name)
    out = np.asarray(Image.fromarray(src).resize((int(w), int(h)), Image.LANCZOS))
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ItemSpec:
    split: str
    index: int
    clip: int  # index into base_clips()
    cls: int  # -1: no needle
    frames: tuple[int, ...] = ()  # needle frame indices, increasing
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # (x0, y0, w, h) per needle frame, raw pixels
    answers: tuple[int, ...] = (0, -1, -1, -1, -1)  # one per QUESTIONS entry, -1 = not asked
    kind: str = "single"
    frame_cls: tuple[int, ...] = ()  # class pasted in each needle frame (order items: two classes)

    def to_dict(self) -> dict:
        return asdict(self)

    def supervision(self) -> Tensor:
        """(n_frames, Q) bool: which questions' attention is trained towards each needle frame.
        single/persist: obj/quarter/quadrant on every needle frame; order: ``order`` on the first
        frame only (the answer is that needle); count: ``count`` on every shown frame."""
        Q = len(QUESTIONS)
        out = torch.zeros(len(self.frames), Q, dtype=torch.bool)
        if not self.frames:
            return out
        if self.kind in ("single", "persist"):
            out[:, :3] = True
        elif self.kind == "order":
            out[0, QUESTIONS.index("order")] = True
        elif self.kind == "count":
            out[:, QUESTIONS.index("count")] = True
        return out


def _quadrant(x0: int, y0: int, w: int, h: int, W: int, H: int) -> int:
    cx, cy = x0 + w / 2.0, y0 + h / 2.0
    return 2 * int(cy >= H / 2.0) + int(cx >= W / 2.0)


def _needle_size(rng, cfg: GenConfig, H: int, W: int, aspect: float) -> tuple[int, int]:
    w = max(2, int(round(rng.uniform(*cfg.width_range) * W)))
    if cfg.aspect_ref is not None:  # shown (h / H) / (w / W) = aspect * aspect_ref after the resize
        aspect = aspect * cfg.aspect_ref * H / W
    h = max(2, int(round(w * aspect)))
    if h > H - 2:  # a tall needle in a wide, short frame: shrink, keep the aspect
        h = H - 2
        w = max(2, int(round(h / aspect)))
    return w, h


def _place(rng, W: int, H: int, w: int, h: int, n: int, step: int) -> tuple[list, int]:
    """Boxes of a needle drifting over n frames, its centre inside one quadrant; and that quadrant."""
    for _ in range(1000):
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        boxes = [(x, y, w, h)]
        for _ in range(n - 1):
            x = int(np.clip(x + rng.integers(-step, step + 1), 0, W - w))
            y = int(np.clip(y + rng.integers(-step, step + 1), 0, H - h))
            boxes.append((x, y, w, h))
        quads = {_quadrant(*b, W, H) for b in boxes}
        if len(quads) == 1:
            return boxes, quads.pop()
    raise RuntimeError("could not place a needle inside one quadrant")  # pragma: no cover


def _two_frames(rng, F: int, gap: int) -> tuple[int, int]:
    """Two frames t1 < t2 with t2 - t1 >= gap, uniform over such pairs."""
    while True:
        t1, t2 = sorted(int(v) for v in rng.integers(0, F, size=2))
        if t2 - t1 >= gap:
            return t1, t2


def sample_item(cfg: GenConfig, split: str, index: int, clip_ids: list[int], sizes: dict[int, tuple[int, int]],
                aspects: list[float] | None = None) -> ItemSpec:
    """Draw item ``index`` of ``split`` (deterministic in (cfg.seed, split, index)).

    ``clip_ids``: the base clips of this split; ``sizes[clip] = (H, W)`` of its frames;
    ``aspects[k]``: height / width of needle class k (default: from the images).
    """
    rng = np.random.default_rng([cfg.seed, SPLITS[split], index])
    K, F, Q = len(cfg.classes), cfg.num_frames, len(QUESTIONS)
    clip = int(clip_ids[int(rng.integers(len(clip_ids)))])
    H, W = sizes[clip]
    step = max(1, int(round(cfg.drift * W)))

    def aspect(k):
        return aspects[k] if aspects is not None else needle_source(cfg.classes[k]).shape[0] / needle_source(cfg.classes[k]).shape[1]

    def answers(**kw):
        a = [-1] * Q
        for k, v in kw.items():
            a[QUESTIONS.index(k)] = int(v)
        return tuple(a)

    if split == "persist":
        kind = "persist"
    else:
        kind = KINDS[int(rng.choice(3, p=np.asarray(cfg.kind_probs) / sum(cfg.kind_probs)))]
    if kind in ("single", "persist"):
        if kind == "single" and rng.random() < cfg.none_prob:
            return ItemSpec(split, index, clip, -1, (), (), answers(obj=K), kind)
        cls = int(rng.integers(K))
        lo, hi = cfg.needle_frames if kind == "single" else cfg.persist_frames
        n = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, F - n + 1))
        w, h = _needle_size(rng, cfg, H, W, aspect(cls))
        boxes, quad = _place(rng, W, H, w, h, n, step)
        return ItemSpec(split, index, clip, cls, tuple(range(start, start + n)), tuple(boxes),
                        answers(obj=cls, quarter=start * 4 // F, quadrant=quad), kind, (cls,) * n)
    t1, t2 = _two_frames(rng, F, cfg.min_gap)
    if kind == "order":
        a, b = (int(v) for v in rng.choice(K, size=2, replace=False))
        boxes = [_place(rng, W, H, *_needle_size(rng, cfg, H, W, aspect(c)), 1, step)[0][0] for c in (a, b)]
        return ItemSpec(split, index, clip, a, (t1, t2), tuple(boxes), answers(order=a), kind, (a, b))
    cls = int(rng.integers(K))
    twice = bool(rng.random() < 0.5)
    w, h = _needle_size(rng, cfg, H, W, aspect(cls))
    frames = (t1, t2) if twice else ((t1,) if rng.random() < 0.5 else (t2,))
    boxes = [_place(rng, W, H, w, h, 1, step)[0][0] for _ in frames]
    return ItemSpec(split, index, clip, cls, frames, tuple(boxes), answers(count=int(twice)), kind, (cls,) * len(frames))


def paste(frames: np.ndarray, spec: ItemSpec, classes=CLASSES) -> np.ndarray:
    """The needle frames of ``spec`` with the needle pasted: (len(spec.frames), H, W, 3) uint8 copies."""
    out = np.array(frames[list(spec.frames)], copy=True)
    fcls = spec.frame_cls or (spec.cls,) * len(spec.frames)
    for k, (x0, y0, w, h) in enumerate(spec.boxes):
        out[k, y0 : y0 + h, x0 : x0 + w] = needle_image(classes[fcls[k]], w, h)
    return out


def needle_cells(spec: ItemSpec, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """(n, gh*gw) bool: token-grid cells whose centre lies in the needle box (at least the centre's cell)."""
    H, W = size
    gh, gw = grid
    out = torch.zeros(len(spec.boxes), gh * gw, dtype=torch.bool)
    cy = (torch.arange(gh) + 0.5) * H / gh
    cx = (torch.arange(gw) + 0.5) * W / gw
    for k, (x0, y0, w, h) in enumerate(spec.boxes):
        m = ((cy >= y0) & (cy < y0 + h))[:, None] & ((cx >= x0) & (cx < x0 + w))[None, :]
        if not m.any():
            m[min(gh - 1, int((y0 + h / 2) * gh / H)), min(gw - 1, int((x0 + w / 2) * gw / W))] = True
        out[k] = m.flatten()
    return out


def video_sizes(video_dir: Path = VIDEO_DIR) -> dict[str, tuple[int, int]]:
    import av

    sizes = {}
    for v in VIDEOS:
        with av.open(str(Path(video_dir) / v)) as c:
            s = c.streams.video[0]
            sizes[v] = (int(s.codec_context.height), int(s.codec_context.width))
    return sizes


def item_specs(cfg: GenConfig, counts: dict[str, int], video_dir: Path = VIDEO_DIR) -> dict[str, list[ItemSpec]]:
    """``counts[split]`` items of each split (prefix-stable: item i does not depend on the count)."""
    clips = base_clips()
    vs = video_sizes(video_dir)
    sizes = {i: vs[c.video] for i, c in enumerate(clips)}
    aspects = [needle_source(c).shape[0] / needle_source(c).shape[1] for c in cfg.classes]
    out = {}
    for split, n in counts.items():
        ids = [i for i, c in enumerate(clips) if c.split == CLIP_SPLIT[split]]
        out[split] = [sample_item(cfg, split, i, ids, sizes, aspects) for i in range(n)]
    return out


# --------------------------------------------------------------------------- in-memory set


@dataclass
class NeedleSet:
    """Items on shared base clips: item i = base clip ``clip[i]`` with frames ``frames[i]`` replaced by ``x[i]``."""

    base_x: Tensor  # (C, F, N, d) (float16 on disk/in memory)
    base_s: Tensor  # (C, F, N) float32
    base_ls: Tensor  # (C, F, N) float32
    clip: Tensor  # (M,) long
    frames: list[Tensor]  # per item: (n_i,) long
    x: list[Tensor]  # per item: (n_i, N, d)
    s: list[Tensor]  # per item: (n_i, N)
    ls: list[Tensor]  # per item: (n_i, N)
    answers: Tensor  # (M, Q) long, one column per QUESTIONS entry (-1 = not asked)
    grid: tuple[int, int] = (14, 14)
    specs: list = field(default_factory=list)
    needle_cells: list[Tensor] | None = None  # per item: (n_i, N) bool, grid cells the needle covers (training aid)
    sup: list[Tensor] | None = None  # per item: (n_i, Q) bool, questions whose attention is trained on that frame

    def __len__(self) -> int:
        return int(self.clip.shape[0])

    def full(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Full tokens (F, N, d) float32, scores (F, N), local scores (F, N) of item i."""
        c = int(self.clip[i])
        x = self.base_x[c].float()
        s, ls = self.base_s[c].clone(), self.base_ls[c].clone()
        f = self.frames[i]
        if len(f):
            x[f] = self.x[i].float()
            s[f] = self.s[i].float()
            ls[f] = self.ls[i].float()
        return x, s, ls

    def subset(self, idx) -> "NeedleSet":
        idx = [int(i) for i in idx]
        return NeedleSet(self.base_x, self.base_s, self.base_ls, self.clip[idx], [self.frames[i] for i in idx],
                         [self.x[i] for i in idx], [self.s[i] for i in idx], [self.ls[i] for i in idx],
                         self.answers[idx], self.grid, [self.specs[i] for i in idx] if self.specs else [],
                         [self.needle_cells[i] for i in idx] if self.needle_cells is not None else None,
                         [self.sup[i] for i in idx] if self.sup is not None else None)


def concat(sets: list["NeedleSet"]) -> "NeedleSet":
    """One set holding the items of ``sets`` in order; they must share their base clips (one ``build``)."""
    if not sets:
        raise ValueError("concat needs at least one set")
    a = sets[0]
    for b in sets[1:]:
        if b.base_x is not a.base_x or b.grid != a.grid:
            raise ValueError("concat: the sets do not share their base clips (build them in one call)")
    cat = lambda attr: [v for ds in sets for v in getattr(ds, attr)]  # noqa: E731
    has = lambda attr: all(getattr(ds, attr) is not None for ds in sets)  # noqa: E731
    return NeedleSet(a.base_x, a.base_s, a.base_ls, torch.cat([ds.clip for ds in sets]), cat("frames"), cat("x"),
                     cat("s"), cat("ls"), torch.cat([ds.answers for ds in sets]), a.grid, cat("specs"),
                     cat("needle_cells") if has("needle_cells") else None, cat("sup") if has("sup") else None)


def fold_video(name: str) -> str:
    """The file of ``VIDEOS`` a fold named ``name`` holds out (file name or stem, any case)."""
    stems = {Path(v).stem.lower(): v for v in VIDEOS if VIDEOS[v] != "test"}
    v = stems.get(Path(str(name)).stem.lower())
    if v is None:
        raise ValueError(f"fold video {name!r}: choose one of {', '.join(sorted(Path(x).stem for x in stems.values()))}"
                         " (a test video cannot be a fold)")
    return v


def fold(sets: dict[str, "NeedleSet"], video: str) -> tuple["NeedleSet", "NeedleSet"]:
    """Leave-one-video-out: (reader training set, evaluation set) from the non-test splits.

    Every item of ``FOLD_SPLITS`` whose background is not a test video goes to the training set if
    its video is not ``video`` (a file name of ``VIDEOS`` or its stem, case-insensitive), else to the
    evaluation set.  A reader trained on the first has never seen a frame of ``video``."""
    clips = base_clips()
    v = fold_video(video)
    missing = [s for s in FOLD_SPLITS if s not in sets]
    if missing:
        raise ValueError(f"fold: splits {missing} were not built")
    pool = concat([sets[s] for s in FOLD_SPLITS])
    video_of = [clips[int(c)].video for c in pool.clip]
    train = [i for i, x in enumerate(video_of) if x != v and VIDEOS[x] != "test"]
    held = [i for i, x in enumerate(video_of) if x == v]
    if not held or not train:
        raise ValueError(f"fold {v}: {len(train)} training and {len(held)} evaluation items (build more items)")
    return pool.subset(train), pool.subset(held)


# --------------------------------------------------------------------------- generation + cache


_MODEL = None


def _encoder():
    global _MODEL
    if _MODEL is None:
        from aot.models.dinov2 import load_dinov2

        _MODEL = load_dinov2()
    return _MODEL


def _encode(cfg: GenConfig, frames: np.ndarray):
    from aot.models.dinov2 import encode_video

    e = encode_video(_encoder(), frames, layers=cfg.layers, pool=cfg.pool, score=cfg.score,
                     image_size=cfg.image_size, batch_size=8, progress=False)
    return e.features.half(), e.scores.float(), e.local_scores.float(), e.grid


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


DEFAULT_COUNTS = {"train": 1200, "val": 400, "test": 1000, "persist": 80, "heldout": 400, "test2": 1000}


def build(cfg: GenConfig = GenConfig(), counts: dict[str, int] | None = None, *, cache_dir: Path = CACHE_DIR,
          video_dir: Path = VIDEO_DIR, progress: bool = True, encode: bool = True) -> dict[str, NeedleSet]:
    """Generate (or load from the cache) the sets of ``counts`` (split -> number of items).

    Missing base clips and items are encoded with DINOv2 (needs ``encode``); each is saved as
    soon as it is done, so an interrupted run resumes where it stopped.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    clips = base_clips()
    base_dir = cache_dir / f"base-{cfg.base_key()}"
    item_dir = cache_dir / f"items-{cfg.item_key()}"
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    specs = item_specs(cfg, counts, video_dir)

    decoded: dict[int, np.ndarray] = {}

    def frames_of(c: int) -> np.ndarray:
        if c not in decoded:
            decoded[c] = decode_clip(clips[c], cfg.num_frames, video_dir)
        return decoded[c]

    # base clips
    missing = [i for i, c in enumerate(clips) if not (base_dir / f"{c.name}.pt").exists()]
    if missing and not encode:
        raise FileNotFoundError(f"{len(missing)} base clips are not cached in {base_dir}")
    for i in tqdm(missing, desc="encode base clips", unit="clip", disable=not progress or not missing):
        x, s, ls, grid = _encode(cfg, frames_of(i))
        _atomic_save({"x": x, "s": s, "ls": ls, "grid": grid, "clip": asdict(clips[i])}, base_dir / f"{clips[i].name}.pt")
    base = [torch.load(base_dir / f"{c.name}.pt", weights_only=True) for c in clips]
    grid = tuple(base[0]["grid"])

    # items: encode the needle frames of missing items, a few items per ViT call
    json_path = item_dir / "config.json"
    if not json_path.exists():
        item_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(asdict(cfg), indent=1))
    todo = [sp for split in specs for sp in specs[split]
            if sp.cls >= 0 and not (item_dir / sp.split / f"{sp.index:05d}.pt").exists()]
    # interleave the splits so that an interrupted run leaves usable prefixes of all
    todo.sort(key=lambda sp: (sp.index / max(1, len(specs[sp.split])), sp.split))
    if todo and not encode:
        raise FileNotFoundError(f"{len(todo)} items are not cached in {item_dir}")
    bar = tqdm(total=len(todo), desc="encode needle items", unit="item", disable=not progress or not todo)
    group = 8
    for g in range(0, len(todo), group):
        chunk = todo[g : g + group]
        pasted = [paste(frames_of(sp.clip), sp, cfg.classes) for sp in chunk]
        from aot.models.dinov2 import preprocess

        # frame sizes differ between videos: resize each item first, then one ViT call for all
        x, s, ls, _ = _encode(cfg, torch.cat([preprocess(p, cfg.image_size) for p in pasted]))
        k = 0
        for sp, p in zip(chunk, pasted):
            n = len(p)
            _atomic_save({"x": x[k : k + n].clone(), "s": s[k : k + n].clone(), "ls": ls[k : k + n].clone(),
                          "spec": sp.to_dict()}, item_dir / sp.split / f"{sp.index:05d}.pt")
            k += n
        bar.update(len(chunk))
    bar.close()

    base_x = torch.stack([b["x"] for b in base])
    base_s = torch.stack([b["s"] for b in base])
    base_ls = torch.stack([b["ls"] for b in base])
    n_tok, dim = base_x.shape[2], base_x.shape[3]
    out = {}
    vs = video_sizes(video_dir)
    for split in specs:
        frames, xs, ss, lss, cells = [], [], [], [], []
        for sp in specs[split]:
            if sp.cls < 0:
                frames.append(torch.zeros(0, dtype=torch.long))
                xs.append(torch.zeros(0, n_tok, dim, dtype=base_x.dtype))
                ss.append(torch.zeros(0, n_tok))
                lss.append(torch.zeros(0, n_tok))
                cells.append(torch.zeros(0, n_tok, dtype=torch.bool))
                continue
            d = torch.load(item_dir / sp.split / f"{sp.index:05d}.pt", weights_only=True)
            if tuple(d["spec"]["frames"]) != sp.frames or d["spec"]["clip"] != sp.clip:
                raise RuntimeError(f"cached item {sp.split}/{sp.index} does not match its spec; clear {item_dir}")
            frames.append(torch.tensor(sp.frames, dtype=torch.long))
            xs.append(d["x"]), ss.append(d["s"]), lss.append(d["ls"])
            cells.append(needle_cells(sp, vs[clips[sp.clip].video], grid))
        ans = torch.tensor([sp.answers for sp in specs[split]], dtype=torch.long).reshape(-1, len(QUESTIONS))
        out[split] = NeedleSet(base_x, base_s, base_ls, torch.tensor([sp.clip for sp in specs[split]], dtype=torch.long),
                               frames, xs, ss, lss, ans, grid, specs[split], cells,
                               [sp.supervision() for sp in specs[split]])
    return out


def stats(sets: dict[str, NeedleSet], classes=CLASSES) -> str:
    lines = []
    clips = base_clips()
    for split, ds in sets.items():
        vids = sorted({clips[int(c)].video for c in ds.clip})
        kinds = {k: sum(sp.kind == k for sp in ds.specs) for k in KINDS}
        lines.append(f"{split}: {len(ds)} items, videos {vids}, kinds {kinds}")
    return "\n".join(lines)


if __name__ == "__main__":  # python benchmarks/needle/data.py [N_TRAIN N_VAL N_TEST N_PERSIST [N_HELDOUT [N_TEST2]]]
    import sys
    import time

    torch.set_num_threads(1)
    counts = dict(zip(DEFAULT_COUNTS, (int(a) for a in sys.argv[1:]))) if len(sys.argv) > 4 else None
    t = time.time()
    s = build(GenConfig(), counts)
    print(stats(s))
    print(f"done in {time.time() - t:.0f} s")
