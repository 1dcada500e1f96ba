"""aot: training-free visual-token compression for video LLMs (token anchors + local-global OT).

    import aot
    out = aot.compress(x, scores, config=aot.AOTConfig(retention=0.1))   # x: (F, N, d)
    out.tokens  # (round(0.1 * F * N), d)

The core (this package's top level) is pure torch; model adapters live in ``aot.models``.
"""

from .compress import Compressed, Mix, compress
from .config import AOTConfig, budget
from .ot import sinkhorn
from .models.patch import patch, unpatch

__all__ = ["AOTConfig", "Compressed", "Mix", "budget", "compress", "patch", "sinkhorn", "unpatch"]
__version__ = "0.1.0"
