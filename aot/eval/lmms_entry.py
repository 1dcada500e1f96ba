"""The payload of the ``lmms_eval.models`` entry point (pyproject.toml): lmms-eval 0.7's
``ModelRegistryV2.load_entrypoint_manifests`` calls :func:`manifests`. Light on purpose: lmms-eval
loads every entry point at start, so the model class (``aot.eval.lmms_plugin``) is imported only
when the model is used."""

from ..families import lmms_models

MODELS = lmms_models()  # lmms-eval model name -> class path, one per family of aot.families


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODELS.items()]
