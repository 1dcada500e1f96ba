"""For lmms-eval's deprecated ``LMMS_EVAL_PLUGINS=aot``, which imports
``aot.models.<name>.<class>`` for every entry of ``aot.models.AVAILABLE_MODELS``."""

from ..eval.lmms_plugin import AOTQwen3VL  # noqa: F401
