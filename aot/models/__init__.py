"""Vision encoders and attention-score helpers.

Submodules are imported on demand: ``aot.models.scores`` needs only torch,
``aot.models.dinov2`` needs transformers and onnx.
"""

# lmms-eval's deprecated LMMS_EVAL_PLUGINS=aot reads this (the entry point is aot.eval.lmms_entry)
AVAILABLE_MODELS = {"aot_llava_onevision": "AOTLlavaOneVision", "aot_qwen2_5_vl": "AOTQwen2_5_VL"}
