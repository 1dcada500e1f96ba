"""Vision encoders and attention-score helpers.

Submodules are imported on demand: ``aot.models.scores`` needs only torch,
``aot.models.dinov2`` needs transformers and onnx.
"""

# lmms-eval's deprecated LMMS_EVAL_PLUGINS=aot reads this (the entry point is aot.eval.lmms_entry)
from ..families import FAMILIES as _FAMILIES

AVAILABLE_MODELS = {f.lmms_model: f.lmms_class for f in _FAMILIES.values()}  # aot.models.<name>.<class> must import
