"""v3 reader: a per-token classifier whose item answers are maxima over the token set.

A token classifier ``p(class | token) = softmax(W2 gelu(W1 norm(x)))`` over K object classes +
background is trained on token-level labels (``data.cell_labels``).  It looks at one token at a
time, so it has no frame or cell embedding to overfit a video's layout, and an item's answers
depend only on WHICH tokens are in the set, never on how many:

* obj: ``score_k = max over tokens of p_k``; the best class, or "none" if its score < ``tau``;
* quarter: the earliest frame among the tokens with ``p_best >= tau`` (the argmax token's frame if
  none) -> quarter of the 32 frames;
* quadrant: the ``p_best``-weighted centroid of the cells of those tokens -> 2 x 2 quadrant;
* order: the two classes with the highest scores; the one whose most confident token sits in the
  earlier frame (ties: the higher score; the first-detection rule of ``quarter`` was at chance on
  order items, misled by early false detections);
* count: frames holding a token with ``p_best >= tau_count``, grouped into runs of consecutive
  frames; two or more runs = "twice".

Frames and cells of a compressed token come from ``Compressed.frames`` / ``positions % N``.

Readers: one per training video left out (leave-one-video-out, ``lovo``); the thresholds are fitted
on their out-of-fold answers (each training item read by the reader that never saw its video);
the benchmark's reader is the ensemble (mean probabilities) of those readers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import QUESTIONS, Sets


@dataclass(frozen=True)
class TokenConfig:
    dim: int = 384
    hidden: int = 128
    num_classes: int = 8  # objects; + 1 background
    epochs: int = 20
    batch_size: int = 4096
    lr: float = 2e-3
    weight_decay: float = 1e-2
    max_weight: float = 1.0  # object classes weighted by inverse frequency up to this (1: unweighted)
    seed: int = 0


class TokenClassifier(nn.Module):
    def __init__(self, cfg: TokenConfig = TokenConfig()):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.body = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.num_classes + 1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (..., K + 1) of tokens (..., d)."""
        return self.body(self.norm(x.float()))


class Ensemble(nn.Module):
    """Mean probabilities of several token classifiers."""

    def __init__(self, members: list[TokenClassifier]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one reader")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities (..., K + 1)."""
        return torch.stack([m(x).softmax(-1) for m in self.members]).mean(0)


def probs_of(model: nn.Module, x: Tensor) -> Tensor:
    with torch.inference_mode():
        out = model(x)
    return out if isinstance(model, Ensemble) else out.softmax(-1)


# --------------------------------------------------------------------------- training


def token_data(ds: Sets, background: int, videos: set[str] | None = None) -> tuple[Tensor, Tensor]:
    """(T, d) tokens and (T,) labels from the base clips and needle frames of the items of ``videos``
    (all if None): base-clip tokens are ``background``, needle frames carry ``ds.labels`` (-1 dropped)."""
    from .data import base_clips

    clips = base_clips()
    xs, ys = [], []
    used = sorted({sp.clip for sp in ds.specs if videos is None or clips[sp.clip].video in videos})
    for i, sp in enumerate(ds.specs):
        if not sp.frames or (videos is not None and clips[sp.clip].video not in videos):
            continue
        lab = ds.labels[i].flatten()
        keep = lab >= 0
        xs.append(ds.x[i].flatten(0, 1)[keep])
        ys.append(lab[keep])
    bg = ds.base_x[used].flatten(0, 2)
    xs.append(bg)
    ys.append(torch.full((bg.shape[0],), background, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def train(x: Tensor, y: Tensor, cfg: TokenConfig = TokenConfig()) -> TokenClassifier:
    """Per-token cross-entropy, AdamW, cosine decay, on tokens x (T, d) with labels y (T,)."""
    torch.manual_seed(cfg.seed)
    model = TokenClassifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(cfg.seed)
    # objects are rare (a few % of tokens): optionally weight them by inverse frequency (an item's
    # answer is a max over ~2000 tokens, so a liberal classifier turns into false detections)
    counts = torch.bincount(y, minlength=cfg.num_classes + 1).float()
    w = (counts[-1] / counts.clamp_min(1)).clamp(min=1.0, max=cfg.max_weight)
    w[-1] = 1.0
    xf = x.float()
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), cfg.batch_size):
            idx = perm[s: s + cfg.batch_size]
            loss = F.cross_entropy(model(xf[idx]), y[idx], weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


# --------------------------------------------------------------------------- answers


def answer(p: Tensor, frames: Tensor, cells: Tensor, grid: tuple[int, int], tau: float, tau_count: float,
           num_frames: int = 32) -> tuple[int, int, int, int, int]:
    """The five answers (obj, quarter, quadrant, order, count) from token probabilities p (R, K + 1)
    at frames (R,) and cells (R,) (row-major in ``grid``)."""
    K = p.shape[1] - 1
    pk = p[:, :K]
    score, arg = pk.max(0)  # (K,)
    best = int(score.argmax())
    obj = best if float(score[best]) >= tau else K

    def first_frame(k: int) -> int:
        hit = pk[:, k] >= tau
        return int(frames[hit].min()) if hit.any() else int(frames[arg[k]])

    quarter = first_frame(best) * 4 // num_frames
    hit = pk[:, best] >= tau
    if not hit.any():
        hit = torch.zeros_like(hit)
        hit[arg[best]] = True
    gh, gw = grid
    w = pk[hit, best]
    r = ((cells[hit] // gw).float() + 0.5) / gh
    c = ((cells[hit] % gw).float() + 0.5) / gw
    cy, cx = float((w * r).sum() / w.sum()), float((w * c).sum() / w.sum())
    quadrant = 2 * int(cy >= 0.5) + int(cx >= 0.5)
    top2 = score.topk(2).indices.tolist()
    fa, fb = int(frames[arg[top2[0]]]), int(frames[arg[top2[1]]])  # each class's most confident token
    order = top2[0] if fa <= fb else top2[1]
    det = torch.unique(frames[pk[:, best] >= tau_count])
    runs = 0 if len(det) == 0 else 1 + int(((det[1:] - det[:-1]) > 1).sum())
    count = int(runs >= 2)
    return obj, quarter, quadrant, order, count


def answers_from_probs(probs: list[tuple[Tensor, Tensor, Tensor]], grid, tau, tau_count) -> Tensor:
    """(M, Q) answers for items given as (p, frames, cells)."""
    return torch.tensor([answer(p, f, c, grid, tau, tau_count) for p, f, c in probs], dtype=torch.long)


def full_probs(model: nn.Module, ds: Sets) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(p (F*N, K+1), frames, cells) per item on full tokens; base clips are classified once."""
    C, Fr, N, _ = ds.base_x.shape
    clips = sorted({sp.clip for sp in ds.specs})
    base = {c: probs_of(model, ds.base_x[c]) for c in clips}  # (F, N, K+1)
    frames = torch.arange(Fr).repeat_interleave(N)
    cells = torch.arange(N).repeat(Fr)
    out = []
    for i, sp in enumerate(ds.specs):
        p = base[sp.clip].clone()
        if sp.frames:
            p[list(sp.frames)] = probs_of(model, ds.x[i])
        out.append((p.flatten(0, 1), frames, cells))
    return out


def correctness(pred: Tensor, answers: Tensor) -> Tensor:
    """(M, Q): 1 correct, 0 wrong, -1 not asked."""
    c = (pred == answers).int()
    return torch.where(answers >= 0, c, torch.full_like(c, -1))


def accuracy(pred: Tensor, answers: Tensor) -> dict[str, float]:
    acc = {}
    for q, name in enumerate(QUESTIONS):
        m = answers[:, q] >= 0
        acc[name] = float((pred[m, q] == answers[m, q]).float().mean()) if m.any() else float("nan")
    asked = [v for v in acc.values() if not math.isnan(v)]
    acc["mean"] = sum(asked) / len(asked) if asked else float("nan")
    return acc


def fit_thresholds(probs, answers: Tensor, grid) -> tuple[float, float]:
    """(tau, tau_count) maximising the obj (resp. count) accuracy of ``probs``' answers (a grid search)."""
    grid_t = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    q_obj, q_cnt = QUESTIONS.index("obj"), QUESTIONS.index("count")
    best = []
    for q in (q_obj, q_cnt):
        rows = [i for i in range(len(probs)) if answers[i, q] >= 0]
        if not rows:  # question never asked: the middle of the grid
            best.append(0.5)
            continue
        scores = []
        for t in grid_t:
            pred = answers_from_probs([probs[i] for i in rows], grid, t, t)
            scores.append(float((pred[:, q] == answers[rows, q]).float().mean()))
        best.append(grid_t[max(range(len(grid_t)), key=lambda j: (scores[j], -abs(grid_t[j] - 0.5)))])
    return best[0], best[1]


def save(models: list[TokenClassifier], thresholds, path) -> None:
    torch.save({"config": asdict(models[0].cfg), "states": [m.state_dict() for m in models],
                "thresholds": list(thresholds)}, path)


def load(path) -> tuple[Ensemble, tuple[float, float]]:
    d = torch.load(path, weights_only=True)
    models = []
    for st in d["states"]:
        m = TokenClassifier(TokenConfig(**d["config"]))
        m.load_state_dict(st)
        models.append(m.eval())
    return Ensemble(models).eval(), tuple(d["thresholds"])
