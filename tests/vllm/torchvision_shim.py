"""Test-only: let PyPI's CUDA-linked torchvision import beside the local CPU torch 2.13 wheel.

torchvision's Python side registers fake (meta) kernels for its C++ operators at import; with a
torch it was not built against, the C++ library does not load, the operators do not exist and the
import fails ("operator torchvision::nms does not exist"). The Qwen-VL processors only need its
pure-Python transforms, so declaring the operator schemas (no kernels) is enough. Installed into
the test venv as a .pth hook by ``python tests/vllm/torchvision_shim.py --install`` (so vLLM's
subprocesses get it too); never part of the aot package.
"""

from __future__ import annotations

import sys

SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def apply() -> None:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018  a torchvision built for this torch: nothing to do
        return
    except (AttributeError, RuntimeError):
        pass
    global _LIB
    _LIB = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS.values():
        _LIB.define(schema)


def install() -> str:
    """Write a .pth hook into this interpreter's site-packages that applies the shim at start-up."""
    import pathlib
    import shutil
    import sysconfig

    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    shutil.copy(__file__, site / "_aot_torchvision_shim.py")
    (site / "_aot_torchvision_shim.pth").write_text("import _aot_torchvision_shim; _aot_torchvision_shim.apply()\n")
    return str(site)


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        print("torchvision shim installed in", install())
    else:
        sys.exit("usage: python tests/vllm/torchvision_shim.py --install")
