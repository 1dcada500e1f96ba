"""A small "reader" that answers the needle questions from a SET of tokens.

Per token: ``h = MLP(LayerNorm(x)) + frame_embedding[f] + cell_embedding[n]``.  Per question q:
attention pooling -- a learned query scores every token (``h . w_q``), softmax over the tokens
of the set, weighted sum of the ``h`` -- then a linear head on that sum and one more number, the
log of the effective number of frames the attention spreads over (``1 / sum_f m_f^2`` with
``m_f`` the attention mass on frame f).  A softmax-weighted mean cannot count (a needle shown
twice pools to the same state as shown once); that number can, and it is still a function of the
token set alone (frames come from ``Compressed.frames``).  That is how an LLM finds the one
token that matters; the set may have any size, so the same reader, trained on full tokens, reads
every method's compressed tokens (their frame index and grid cell come from
``Compressed.frames`` and ``Compressed.positions % N``).

Training: cross-entropy on the three answers plus an attention-supervision term,
-log(attention mass on the needle's own tokens), for items with a needle.  Without it the
queries never found a 1-in-2000 token (a first run stayed at chance: with near-uniform attention
the needle's gradient drowns in the background's); with it the reader learns in minutes.  The
term only shapes training; at evaluation the reader is the plain set reader above, and it gets
no needle locations.

Training (full tokens only) uses that items share a few base clips: softmax pooling over all
F*N tokens equals a softmax over frames (weighted by each frame's logsumexp score) of per-frame
pooled states, so per step the MLP runs once per base clip frame and once per needle frame, and
each item combines 32 per-frame summaries.  The function is exactly the generic ``forward``
(tests check it); it just avoids recomputing the identical background rows of every item.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import QUESTIONS, NeedleSet


@dataclass(frozen=True)
class ReaderConfig:
    dim: int = 384
    hidden: int = 128
    num_frames: int = 32
    num_cells: int = 196
    num_classes: tuple[int, ...] = (9, 4, 4, 8, 2)  # obj (K + none), quarter, quadrant, order (K), count
    pooling: str = "attention"  # "attention" (a learned query per question) or "max" (channel-wise max)
    attn_weight: float = 1.0  # weight of the attention-supervision loss (mass on the needle's tokens)
    epochs: int = 15  # what every v2 result in the README was trained with (v1 used 20-25)
    batch_size: int = 32
    clips_per_batch: int = 2  # items of a step come from about this many base clips (speed)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


class Reader(nn.Module):
    def __init__(self, cfg: ReaderConfig = ReaderConfig()):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        # no affine: its scale/shift would fold into the first Linear; without it the input needs no
        # gradient, which makes the backward pass over ~10^5 tokens per step much cheaper
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, h), nn.GELU(), nn.Linear(h, h))
        self.frame_emb = nn.Embedding(cfg.num_frames, h)
        self.cell_emb = nn.Embedding(cfg.num_cells, h)
        nn.init.normal_(self.frame_emb.weight, std=0.1)
        nn.init.normal_(self.cell_emb.weight, std=0.1)
        self.query = nn.Linear(h, len(cfg.num_classes))  # one scoring query per question
        self.heads = nn.ModuleList(nn.Linear(h + 1, c) for c in cfg.num_classes)  # + log effective frames

    def embed(self, x: Tensor, frames: Tensor, cells: Tensor) -> Tensor:
        """Per-token states (..., R, hidden) of tokens x (..., R, d) at frames/cells (..., R)."""
        return self.mlp(self.norm(x.float())) + self.frame_emb(frames) + self.cell_emb(cells)

    def heads_of(self, pooled: Tensor, frame_mass: Tensor | None) -> list[Tensor]:
        """Logits per question from pooled states (B, Q, hidden) (or (B, hidden) for max pooling) and
        the attention mass per frame (B, F, Q) (None: max pooling, the count feature is 0)."""
        B = pooled.shape[0]
        if frame_mass is None:
            feat = pooled.new_zeros(B, len(self.heads))
        else:
            feat = -torch.log((frame_mass ** 2).sum(1).clamp_min(1e-12))  # (B, Q): log effective frames
        if pooled.dim() == 2:
            pooled = pooled[:, None].expand(B, len(self.heads), pooled.shape[-1])
        return [head(torch.cat([pooled[:, q], feat[:, q : q + 1]], -1)) for q, head in enumerate(self.heads)]

    def pool(self, h: Tensor, frames: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Logits per question from states h (B, R, hidden) at frames (B, R); mask (B, R) True = real token."""
        if self.cfg.pooling == "max":
            if mask is not None:
                h = h.masked_fill(~mask[..., None], float("-inf"))
            return self.heads_of(h.amax(dim=1), None)
        a = self.query(h)  # (B, R, Q)
        if mask is not None:
            a = a.masked_fill(~mask[..., None], float("-inf"))
        w = torch.softmax(a, dim=1)  # over tokens
        pooled = torch.einsum("brq,brh->bqh", w, h)  # (B, Q, hidden)
        B, R, Q = w.shape
        mass = w.new_zeros(B, self.cfg.num_frames, Q).scatter_add_(1, frames[..., None].expand(B, R, Q), w)
        return self.heads_of(pooled, mass)

    def forward(self, x: Tensor, frames: Tensor, cells: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        return self.pool(self.embed(x, frames, cells), frames, mask)


# --------------------------------------------------------------------------- full-token fast path


def _frame_pool(reader: Reader, h: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frame pieces of the attention pooling of states h (..., N, hidden) (one frame per row):
    the logsumexp of each question's scores (..., Q) and the softmax-weighted mean state (..., Q, hidden)."""
    a = reader.query(h)  # (..., N, Q)
    return torch.logsumexp(a, dim=-2), torch.einsum("...nq,...nh->...qh", torch.softmax(a, dim=-2), h)


def _needles(ds: NeedleSet, idx: Tensor):
    """(batch row, frame) of every needle frame of items idx, and their tokens."""
    rows, fids, xs = [], [], []
    for b, i in enumerate(idx.tolist()):
        f = ds.frames[i]
        if len(f):
            rows.append(torch.full((len(f),), b, dtype=torch.long))
            fids.append(f)
            xs.append(ds.x[i])
    if not rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), []
    return torch.cat(rows), torch.cat(fids), xs


def full_logits(reader: Reader, ds: NeedleSet, idx: Tensor, attn_loss: bool = False):
    """Logits of the full token sets of items ``idx``; equal to ``reader(full tokens)``.

    Softmax pooling over all F*N tokens = softmax over frames (by each frame's logsumexp) of the
    per-frame pooled states, so each base clip's frames are embedded and pooled once per call and
    an item only adds its needle frames.
    """
    _, Fr, N, _ = ds.base_x.shape
    frame_ids = torch.arange(Fr)[:, None].expand(Fr, N)
    cells = torch.arange(N)[None, :].expand(Fr, N)
    uniq, inv = torch.unique(ds.clip[idx], return_inverse=True)
    if reader.cfg.pooling == "max":  # max over all tokens = max over frames of per-frame maxima
        mx = reader.embed(ds.base_x[uniq], frame_ids, cells).amax(dim=2)[inv]  # (B, F, h)
        rows, fids, xs = _needles(ds, idx)
        if len(rows):
            hn = reader.embed(torch.cat(xs), fids[:, None].expand(-1, N), torch.arange(N)[None, :].expand(len(fids), N))
            mx = mx.index_put((rows, fids), hn.amax(dim=1))
        return reader.heads_of(mx.amax(dim=1), None)
    lse_b, mean_b = _frame_pool(reader, reader.embed(ds.base_x[uniq], frame_ids, cells))  # (U, F, Q), (U, F, Q, h)
    lse, mean = lse_b[inv], mean_b[inv]  # (B, F, Q), (B, F, Q, h)
    rows, fids, xs = _needles(ds, idx)
    if len(rows):
        hn = reader.embed(torch.cat(xs), fids[:, None].expand(-1, N), torch.arange(N)[None, :].expand(len(fids), N))
        lse_n, mean_n = _frame_pool(reader, hn)  # (T, Q), (T, Q, h)
        lse = lse.index_put((rows, fids), lse_n)
        mean = mean.index_put((rows, fids), mean_n)
    mass = torch.softmax(lse, dim=1)  # (B, F, Q): attention mass per frame
    pooled = torch.einsum("bfq,bfqh->bqh", mass, mean)  # (B, Q, h)
    logits = reader.heads_of(pooled, mass)
    if attn_loss and len(rows) and ds.needle_cells is not None:
        # -log(attention mass on the needle's tokens), per question, averaged over the (item,
        # question) pairs that have a supervised needle frame (NeedleSet.sup: which questions look
        # at which needle frame; all questions at all needle frames if absent)
        cm = torch.cat([ds.needle_cells[i] for i in idx.tolist() if len(ds.frames[i])])  # (T, N)
        Q = lse.shape[-1]
        if ds.sup is not None:
            sp = torch.cat([ds.sup[i] for i in idx.tolist() if len(ds.frames[i])])  # (T, Q)
        else:
            sp = torch.ones(cm.shape[0], Q, dtype=torch.bool)
        allowed = cm[..., None] & sp[:, None, :]  # (T, N, Q)
        # a large finite "minus infinity": an (item, question) without a supervised frame must give
        # a finite logsumexp, or its (masked-out) gradient would be NaN
        neg = -1e4
        a = reader.query(hn).masked_fill(~allowed, neg)  # (T, N, Q)
        # items have several needle frames: combine them with a logsumexp over the frames
        per = torch.full((len(idx), int(fids.numel()), Q), neg)
        per[rows, torch.arange(len(rows))] = torch.logsumexp(a, dim=1)
        lse_needle = torch.logsumexp(per, dim=1)  # (B, Q)
        has = torch.zeros(len(idx), Q).index_add_(0, rows, allowed.any(1).float()) > 0
        loss = (torch.logsumexp(lse, dim=1) - lse_needle)[has].mean() if has.any() else None
        return logits, loss
    return (logits, None) if attn_loss else logits


def loss_fn(logits: list[Tensor], answers: Tensor) -> Tensor:
    total = 0.0
    for q, lg in enumerate(logits):
        y = answers[:, q]
        if (y >= 0).any():
            total = total + F.cross_entropy(lg, y, ignore_index=-1)
    return total


def predict_full(reader: Reader, ds: NeedleSet, batch_size: int = 64) -> Tensor:
    """Predictions (M, Q) on full tokens."""
    reader.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(ds), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(ds)))
            out.append(torch.stack([lg.argmax(-1) for lg in full_logits(reader, ds, idx)], 1))
    return torch.cat(out)


def accuracy(pred: Tensor, answers: Tensor) -> dict[str, float]:
    """Per-question accuracy (quarter/quadrant only where defined) and their mean."""
    acc = {}
    names = QUESTIONS[: answers.shape[1]]
    for q, name in enumerate(names):
        m = answers[:, q] >= 0
        acc[name] = float((pred[m, q] == answers[m, q]).float().mean()) if m.any() else float("nan")
    asked = [acc[n] for n in names if not math.isnan(acc[n])]
    acc["mean"] = sum(asked) / len(asked) if asked else float("nan")
    return acc


def _clip_grouped_order(ds: NeedleSet, clips_per_group: int, g: torch.Generator) -> Tensor:
    """A random item order in which consecutive items come from random groups of a few base clips
    (a batch then embeds only those clips' background frames); shuffled within each group."""
    clips = torch.unique(ds.clip)
    clips = clips[torch.randperm(len(clips), generator=g)]
    rank = torch.empty(int(ds.clip.max()) + 1, dtype=torch.long)
    rank[clips] = torch.arange(len(clips)) // max(1, clips_per_group)
    perm = torch.randperm(len(ds), generator=g)
    return perm[torch.sort(rank[ds.clip[perm]], stable=True).indices]


def train(ds: NeedleSet, cfg: ReaderConfig = ReaderConfig(), *, val: NeedleSet | None = None,
          progress: bool = True, log=print) -> Reader:
    """Train a reader on the full tokens of ``ds`` (Adam, fixed seed, cosine LR decay)."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    reader = Reader(cfg)
    opt = torch.optim.AdamW(reader.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(ds) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    bar = tqdm(range(cfg.epochs), desc="train reader", unit="epoch", disable=not progress)
    for epoch in bar:
        reader.train()
        perm = _clip_grouped_order(ds, cfg.clips_per_batch, g)
        total = 0.0
        for s in range(0, len(ds), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if cfg.attn_weight > 0 and cfg.pooling == "attention":
                logits, aux = full_logits(reader, ds, idx, attn_loss=True)
                loss = loss_fn(logits, ds.answers[idx]) + (cfg.attn_weight * aux if aux is not None else 0.0)
            else:
                loss = loss_fn(full_logits(reader, ds, idx), ds.answers[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        msg = f"loss {total / len(ds):.3f}"
        if val is not None and (epoch % 5 == 4 or epoch == cfg.epochs - 1):
            acc = accuracy(predict_full(reader, val), val.answers)
            msg += " val " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
        bar.set_postfix_str(msg)
        if log is not None and (epoch % 5 == 4 or epoch == cfg.epochs - 1):
            log(f"  epoch {epoch + 1}/{cfg.epochs} {msg} ({time.time() - t0:.0f} s)")
    reader.eval()
    return reader


def save(reader: Reader, path) -> None:
    torch.save({"config": asdict(reader.cfg), "state": reader.state_dict()}, path)


def load(path) -> Reader:
    d = torch.load(path, weights_only=True)  # tensors and plain values only (torch < 2.6 defaults to False)
    cfg = d["config"]
    cfg["num_classes"] = tuple(cfg["num_classes"])
    reader = Reader(ReaderConfig(**cfg))
    reader.load_state_dict(d["state"])
    return reader.eval()
