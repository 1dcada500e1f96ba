"""Token-compression methods selectable by name: AOT, its ablations, and the comparison methods."""

from .registry import Method, for_config, get, names, register

from . import aot_method  # noqa: E402,F401  registers "aot" and the paper's ablations
from . import visionzip  # noqa: E402,F401  registers "visionzip"
from . import fastvid  # noqa: E402,F401  registers "fastvid"
from . import dycoke  # noqa: E402,F401  registers "dycoke"
from . import baselines  # noqa: E402,F401  registers "pooling" and "random"
from . import holitom  # noqa: E402,F401  registers "holitom"
from . import flashvid  # noqa: E402,F401  registers "flashvid"
from . import prunevid  # noqa: E402,F401  registers "prunevid"
from . import inllm  # noqa: E402,F401  registers "fastv" and "pdrop" (in-LLM: only through aot.patch)

__all__ = ["Method", "for_config", "get", "names", "register"]
