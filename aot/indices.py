"""Constant index tensors built from Python ints, cached per content and device.

The core's index tensors (clip starts, later frames, window tables, ...) depend only on the layout
(F, N, clips, budget), which a serving loop repeats call after call. Built with ``torch.tensor``
they cost a host-to-device copy and a few operators every call; here each is built once per
distinct content and device and then reused (no copy, no operator). The cache key is the content
itself, so a hit is always the same tensor. Nothing may write into a returned tensor.
Under ``torch.compile`` a fresh tensor is built (dynamo makes it a constant of the graph).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor

__all__ = ["const"]

_CACHE: OrderedDict = OrderedDict()
_MAX = 256  # distinct tensors kept (least recently used dropped first)
_LOCK = threading.Lock()  # serving may compress from several threads


def _freeze(data):
    return tuple(_freeze(x) for x in data) if isinstance(data, (list, tuple)) else data


def const(data, device, dtype=torch.long) -> Tensor:
    """torch.tensor(data, dtype, device), cached: data is a (nested) list of Python ints or bools."""
    if torch.compiler.is_compiling():
        return torch.tensor(data, dtype=dtype, device=device)
    key = (dtype, str(torch.device(device)), _freeze(data))
    with _LOCK:
        t = _CACHE.get(key)
        if t is not None:
            _CACHE.move_to_end(key)
            return t
    # a plain tensor even when the first call runs under inference_mode (later calls may record grad)
    with torch.inference_mode(False), torch.no_grad():
        t = torch.tensor(data, dtype=dtype, device=device)
    with _LOCK:
        t = _CACHE.setdefault(key, t)  # another thread may have built it meanwhile: keep one
        _CACHE.move_to_end(key)
        if len(_CACHE) > _MAX:
            _CACHE.popitem(last=False)
    return t
