"""Sinkhorn early stops without a host read per check: one read per ``compress`` call (opt-in).

The early stop (``tol``) checks every 10 iterations whether every problem of a stop group meets the
tolerance. Reading that answer to decide whether to go on is a device-to-host sync, and AOT solves
its Sinkhorn problems in a chain (the intra solve, then one per Eq. 16 merge step: 13 at today's
defaults at 32 frames), each stopping after its own number of checks: 14 to 95 reads a call.

Deferred, each plain-route solve runs a number of checks fixed before the call (its cap), freezes
every stop group at the first check where it meets tol (it keeps that check's state, exactly what
stopping there returns), and leaves on the device one flag per check, "every group has stopped".
After the call one read fetches all flags. If every solve stopped within its cap, the outputs are bit
for bit those of the per-check loop (the frozen state is the state the loop would have stopped with,
and every later solve saw the same inputs). If one did not, the call is run again with per-check
reads, exactly the old behaviour, and what it needed is learned.

Caps are learned per problem shape (videos, frames, tokens, channels, dtype, device, config, clip
layout): the first call of a shape reads per check and records how many checks each solve needed; a
later call gives each solve the most checks it needed in the last ``WINDOW`` (8) calls of that shape.
A cap larger than a solve needs costs its extra iterations (frozen groups do not change); a cap too
short costs the whole call again.

Why it is off by default (``deferred(True)`` or ``AOT_DEFERRED_STOPS=1`` turns it on): on a stream of
different real videos (benchmarks/stop_caps.py, 5 videos x 3 rounds, DINOv2 tokens) the solves need
1 to 9 checks depending on the video, so shared caps run many spare iterations: 2 reads a call
instead of 17-94, but 5,385 kernel launches instead of 1,307-4,889 (up to 4.1x). In eager mode a
read costs about what a few launches cost when the GPU is launch-bound (it waits for a short queue),
so the per-check loop is the cheaper default. Deferral is for callers to whom a read costs more than
launches: CUDA graph capture and ``torch.compile(fullgraph=True)`` (no read may happen inside; a
replayed graph's launches are nearly free), or a serving loop that must not stall its CPU thread.
Only the plain scaling route defers (``aot.ot._sinkhorn_plain``, AOT's intra and merge solves at
reg >= ~0.09); the other routes keep their read per check. Never deferred while torch.compile traces
or a gradient is recorded.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Hashable, Iterator

import torch
from torch import Tensor

__all__ = ["Ledger", "caps", "clear", "deferred", "run"]

_LEDGER: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("aot_stop_ledger", default=None)
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aot_deferred_stops", default=os.environ.get("AOT_DEFERRED_STOPS", "0") not in ("", "0", "false", "False"))
# per shape, the checks each solve needed in the last WINDOW calls (a call's caps: their maximum)
_CAPS: collections.OrderedDict[Hashable, collections.deque] = collections.OrderedDict()
_MAX_KEYS = 256  # shapes remembered (least recently used dropped)
WINDOW = 8
_LOCK = threading.Lock()  # serving may compress from several threads


class Ledger:
    """The stop checks of one call. caps=None: record mode (each solve reads per check and reports how
    many checks it ran); a list: deferred mode (solve i runs caps[i] checks, or all of them past the
    list's end, and leaves its flags here)."""

    def __init__(self, caps: list[int] | None = None):
        self.caps = caps
        self.recorded: list[int] = []  # record mode: checks each solve needed (all of them if it never met tol)
        self.flags: list[Tensor] = []  # deferred mode: per solve, (checks run,) bool "every group stopped"
        self.meta: list[tuple[int, int]] = []  # deferred mode: (checks run, checks the solve may run at most)

    @property
    def recording(self) -> bool:
        return self.caps is None

    def next_cap(self) -> int:
        """Checks the next deferred solve runs (a solve past the recorded list runs all of them)."""
        i = len(self.meta)
        return self.caps[i] if i < len(self.caps) else 1 << 30

    def add_flags(self, flags: list[Tensor], total: int) -> None:
        """flags: one 0-dim bool per check run; total: the checks the per-check loop could run."""
        if flags:
            self.flags.append(torch.stack(flags) if len(flags) > 1 else flags[0].reshape(1))
        self.meta.append((len(flags), total))

    def resolve(self) -> list[int] | None:
        """One host read of every solve's flags: the checks each needed, or None if one did not stop
        within its cap (its result, and every later solve's, is then not the per-check loop's)."""
        got = torch.cat(self.flags).tolist() if self.flags else []  # the one read of the call
        needs, at = [], 0
        for ran, total in self.meta:
            row, at = got[at:at + ran], at + ran
            if True in row:
                needs.append(row.index(True) + 1)
            elif ran == total:  # it ran every check the per-check loop could: the same iterations
                needs.append(total)
            else:
                return None
        return needs


def active() -> Ledger | None:
    """The ledger of the call being computed, if its stops are recorded or deferred."""
    return _LEDGER.get()


@contextlib.contextmanager
def deferred(enabled: bool) -> Iterator[None]:
    """Within the block, compress defers its stop checks to one read per call (True) or reads per
    check (False, the default unless AOT_DEFERRED_STOPS=1). The setting is a context variable: it
    holds for this thread (or asyncio task) only; a new thread starts from the process default, so a
    serving process sets AOT_DEFERRED_STOPS=1 or enters the block in each worker thread."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _with(ledger: Ledger, fn: Callable):
    token = _LEDGER.set(ledger)
    try:
        return fn()
    finally:
        _LEDGER.reset(token)


def caps(key: Hashable) -> list[int] | None:
    """The checks each solve of the next call of this shape will run: for each solve the most any of
    the last ``WINDOW`` calls needed (None: no call of this shape yet)."""
    with _LOCK:
        seen = list(_CAPS.get(key) or ())
        if seen:
            _CAPS.move_to_end(key)
    if not seen:
        return None
    width = max(len(n) for n in seen)
    return [max(n[i] for n in seen if i < len(n)) for i in range(width)]


def _learn(key: Hashable, needs: list[int]) -> None:
    with _LOCK:
        _CAPS.setdefault(key, collections.deque(maxlen=WINDOW)).append(needs)
        _CAPS.move_to_end(key)
        while len(_CAPS) > _MAX_KEYS:
            _CAPS.popitem(last=False)


def run(fn: Callable, key: Hashable, *, eligible: bool = True):
    """fn() (one compress core call) with its Sinkhorn stop checks deferred to one read (see module
    docstring). key: what fixes the sequence of solves and their shapes. eligible=False, or
    deferral off (the default), or torch.compile tracing: fn() as it is (a read per check)."""
    if not eligible or not _ENABLED.get() or torch.compiler.is_compiling():
        return fn()
    cap = caps(key)
    if cap is not None:
        ledger = Ledger(cap)
        out = _with(ledger, fn)
        needs = ledger.resolve()
        if needs is not None:
            _learn(key, needs)
            return out
        del out  # a cap was short: this result is not the per-check loop's; compute it again
    ledger = Ledger()
    out = _with(ledger, fn)
    _learn(key, ledger.recorded)
    return out


def clear() -> None:
    """Forget every learned cap (the next call of each shape records again)."""
    with _LOCK:
        _CAPS.clear()
