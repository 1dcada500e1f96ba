"""Token-compression methods selectable by name: AOT, its ablations, and the comparison methods."""

from .registry import Method, get, names, register

from . import aot_method  # noqa: E402,F401  registers "aot" and the paper's ablations

__all__ = ["Method", "get", "names", "register"]
