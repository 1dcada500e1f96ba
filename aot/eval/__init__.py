"""Evaluation: ``aot eval`` (a resumable local multiple-choice video QA runner, ``aot.eval.runner``)
and the lmms-eval plugin (``aot.eval.lmms_plugin``). Nothing here is imported by ``import aot``."""
