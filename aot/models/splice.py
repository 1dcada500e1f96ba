"""Rebuild a tokenised prompt after its videos were compressed: ids, attention mask, positions.

A processor expands every video into a run of P placeholder tokens (LLaVA-OneVision: F * 196 + 1,
the last one for the newline). After compression a video is Q LLM tokens instead, each with its
index in the video's *uncompressed layout* (length P_full; P_full = P for transformers' own layout,
not for LLaVA-Video's grid layout). ``splice_prompt`` swaps each run of P placeholders for Q, keeps
every other token, re-pads rows that came out of different lengths on the side the input was padded
on, and, if asked, gives every token the position it would have had in the uncompressed prompt
(``positions="original"``, what FastVID does) instead of contiguous ones.

Pure torch: no transformers import.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["VideoSlots", "Spliced", "splice_prompt", "placeholder_blocks", "lay_out_video", "LAYOUTS",
           "gather_positions"]

# "onevision": transformers' LlavaOnevision: F * h * w tokens, then one newline for the video.
# "grid": LLaVA-Video's original code (mm_newline_position="grid"): a newline after every grid row.
LAYOUTS = ("onevision", "grid")


class VideoSlots(NamedTuple):
    """Where one compressed video's tokens sit in its uncompressed layout."""

    index: Tensor  # (Q,) int64, strictly increasing indices in [0, full_length)
    full_length: int  # P_full: tokens of this video in the uncompressed layout


class Spliced(NamedTuple):
    input_ids: Tensor  # (B, L') the prompt with every video run replaced by its Q placeholders
    attention_mask: Tensor  # (B, L') 1 for real tokens, 0 for padding
    position_ids: Tensor | None  # (B, L') original-layout positions, or None for contiguous ones
    video_lengths: list[int]  # Q of every video, in placeholder order
    source: Tensor | None = None  # (B, L') column of the input row each token comes from, -1 for new padding


def placeholder_blocks(input_ids: Tensor, token_id: int, per_video: int | list[int],
                       n_videos: int) -> list[tuple[int, int]]:
    """(row, first column) of every video's run of ``per_video`` placeholders, in row-major order.

    input_ids (B, L); ``per_video`` one count for all videos or one per video (Qwen2.5-VL: videos of
    different lengths or sizes). Raises a ValueError naming the numbers when the prompt does not hold exactly
    ``n_videos`` contiguous runs of ``per_video`` placeholders (a missing ``<video>`` token, a video
    whose placeholders were edited by hand, or a processor built for another frame count).
    """
    rows, cols = (input_ids == token_id).nonzero(as_tuple=True)  # row-major order
    found = rows.numel()
    counts = [per_video] * n_videos if isinstance(per_video, int) else [int(c) for c in per_video]
    if len(counts) != n_videos:
        raise ValueError(f"per_video lists {len(counts)} counts for {n_videos} video(s)")
    if found != sum(counts):
        if found == 0:
            raise ValueError(
                f"the prompt holds no video placeholder (token id {token_id}) but {n_videos} video(s) were "
                f"given; put the processor's video token (e.g. '<video>') in the text")
        each = (f"{per_video} tokens each" if isinstance(per_video, int)
                else f"{', '.join(map(str, counts))} tokens")
        raise ValueError(
            f"the prompt holds {found} video placeholders (token id {token_id}) but {n_videos} video(s) of "
            f"{each} need {sum(counts)}; let the processor expand the video "
            f"token and do not edit its placeholders")
    blocks = []
    first = 0
    for v, n in enumerate(counts):
        r, c = rows[first: first + n], cols[first: first + n]
        first += n
        if bool((r != r[0]).any()) or int(c[-1] - c[0]) != n - 1:
            raise ValueError(
                f"the placeholders of video {v} are not one contiguous run of {n} tokens in one row; "
                f"the prompt's video tokens were edited by hand")
        blocks.append((int(r[0]), int(c[0])))
    return blocks


def _pad_side(mask: Tensor) -> str:
    """'left' unless some row is padded on the right only (decoder-only generation pads left)."""
    if bool((mask[:, -1] == 0).any()) and not bool((mask[:, 0] == 0).any()):
        return "right"
    return "left"


def splice_prompt(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    token_id: int,
    per_video: int | list[int],
    videos: list[VideoSlots],
    positions: str = "contiguous",
    pad_token_id: int = 0,
) -> Spliced:
    """Replace each video's ``per_video`` placeholders in input_ids (B, L) by ``len(videos[v].index)``.

    ``per_video``: one placeholder count for every video, or one per video.
    ``source`` of the result: for every output token the column of the input row it comes from (a
    kept video token: its run's first column + its layout index, which for a layout equal to the
    placeholders' is its own placeholder), -1 for padding added by re-padding.

    Padding tokens (mask 0) are kept where they are; when rows come out of different lengths they
    are padded again with ``pad_token_id`` on the side the input was padded on (left by default).
    ``positions="original"``: position_ids (B, L') count real tokens as if every video still had
    its ``full_length`` tokens (a compressed token takes its layout index), padding gets 0 (as
    transformers' generate does); ``"contiguous"``: position_ids is None.
    """
    if positions not in ("contiguous", "original"):
        raise ValueError(f"positions must be 'contiguous' or 'original', got {positions!r}")
    b, _ = input_ids.shape
    dev = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(dev)
    blocks = placeholder_blocks(input_ids, token_id, per_video, len(videos))
    by_row: list[list[int]] = [[] for _ in range(b)]
    for v, (row, _) in enumerate(blocks):
        by_row[row].append(v)

    counts = [per_video] * len(videos) if isinstance(per_video, int) else list(per_video)
    ids_rows, mask_rows, pos_rows, src_rows = [], [], [], []
    for row in range(b):
        ids_parts, mask_parts, pos_parts, src_parts = [], [], [], []
        cursor, counter = 0, 0  # column in the input row; position of the next real token
        for v in by_row[row] + [None]:
            start = blocks[v][1] if v is not None else input_ids.shape[1]
            text_ids, text_mask = input_ids[row, cursor:start], mask[row, cursor:start]
            real = text_mask.long()
            ids_parts.append(text_ids)
            mask_parts.append(text_mask)
            src_parts.append(torch.arange(cursor, start, device=dev))
            pos_parts.append(((counter + real.cumsum(0) - 1) * real))  # padding -> 0
            counter += int(real.sum())
            if v is None:
                break
            slots = videos[v]
            q = slots.index.to(dev)
            ids_parts.append(torch.full((q.numel(),), token_id, dtype=input_ids.dtype, device=dev))
            mask_parts.append(torch.ones(q.numel(), dtype=mask.dtype, device=dev))
            pos_parts.append(counter + q)
            src_parts.append(start + q)
            counter += slots.full_length
            cursor = start + counts[v]
        ids_rows.append(torch.cat(ids_parts))
        mask_rows.append(torch.cat(mask_parts))
        pos_rows.append(torch.cat(pos_parts))
        src_rows.append(torch.cat(src_parts))

    width = max(r.numel() for r in ids_rows)
    side = _pad_side(mask)

    def pad(rows: list[Tensor], value: int) -> Tensor:
        out = []
        for r in rows:
            fill = torch.full((width - r.numel(),), value, dtype=r.dtype, device=dev)
            out.append(torch.cat([fill, r] if side == "left" else [r, fill]))
        return torch.stack(out)

    new_ids = pad(ids_rows, pad_token_id)
    new_mask = pad(mask_rows, 0)
    new_pos = pad(pos_rows, 0) if positions == "original" else None
    return Spliced(new_ids, new_mask, new_pos, [v.index.numel() for v in videos], pad(src_rows, -1))


def gather_positions(full: Tensor, source: Tensor) -> Tensor:
    """Position ids of a spliced prompt, taken from those of the uncompressed one.

    full (..., B, L): the uncompressed prompt's position ids (Qwen2.5-VL's M-RoPE: (3, B, L), the
    (t, h, w) of every token); source (B, L'): ``Spliced.source``. Every token takes the ids of the
    column it came from (a kept video token its own cell, an anchor its keyframe cell); added padding
    gets 0 (as transformers' rope index gives padding). Returns (..., B, L').
    """
    if full.shape[-2] != source.shape[0]:
        raise ValueError(f"full positions cover {full.shape[-2]} rows, source {source.shape[0]}")
    src = source.to(full.device)
    idx = src.clamp(min=0).expand(*full.shape[:-2], *src.shape)
    out = full.gather(-1, idx)
    return out.masked_fill(src < 0, 0)


def lay_out_video(tokens: Tensor, positions: Tensor, newline: Tensor, *, frames: int, grid: tuple[int, int],
                  layout: str) -> tuple[Tensor, VideoSlots]:
    """The LLM-facing sequence of one compressed video and where its tokens sit in the full layout.

    tokens (R, d) ordered by positions (R,) (flat f * N + n, increasing, N = h * w); newline (d,).
    "onevision": the R tokens, then the newline (full layout F * N + 1).
    "grid": a newline after the last kept token of every grid row (frame, row) that keeps a token,
    so that at retention 1 the sequence is LLaVA-Video's: per frame, per row, w tokens then a
    newline (full layout F * h * (w + 1)).
    Returns (features (Q, d), VideoSlots).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    h, w = grid
    n = h * w
    dev = tokens.device
    positions = positions.to(dev)
    nl = newline.to(dtype=tokens.dtype, device=dev).reshape(1, -1)
    if layout == "onevision":
        index = torch.cat([positions, torch.tensor([frames * n], device=dev)])
        return torch.cat([tokens, nl]), VideoSlots(index, frames * n + 1)
    f, cell = positions // n, positions % n
    row, col = cell // w, cell % w
    token_index = f * h * (w + 1) + row * (w + 1) + col  # (R,)
    rows = torch.unique(f * h + row)  # (frame, row) pairs that keep a token, sorted
    newline_index = rows * (w + 1) + w  # (rows,) = f * h * (w + 1) + r * (w + 1) + w
    index = torch.cat([token_index, newline_index])
    order = torch.argsort(index)
    feats = torch.cat([tokens, nl.expand(rows.numel(), -1)])[order]
    return feats, VideoSlots(index[order], frames * h * (w + 1))
