"""Vision encoders and attention-score helpers.

Submodules are imported on demand: ``aot.models.scores`` needs only torch,
``aot.models.dinov2`` needs transformers and onnx.
"""
