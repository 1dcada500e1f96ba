"""The lmms-eval models ``aot_llava_onevision`` and ``aot_qwen2_5_vl`` with the in-LLM methods
(``method=fastv,retention=0.5,k=2`` and ``method=pdrop,retention=0.5,layers=1x3``), built in process
on tiny 4-layer checkpoints saved here, ``generate_until`` on 4 real videos in batches of 2.

Independent answers: ``aot.patch(model, FastVConfig/PDropConfig)`` + ``generate`` on one video at a
time with the prompt written out by hand; the logged ``visual_tokens`` (what the layers after the
last stage and the decoding steps see, as ``aot eval`` and ``aot run``'s ``video_tokens_out``) from
the layer schedule by hand, ``visual_tokens_in`` the processor's placeholder count (the video enters
the LLM whole). Qwen2.5-VL videos of different token counts in one batch run apart."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("lmms_eval")  # the `lmms` extra

import torch  # noqa: E402

import aot  # noqa: E402
import hf_tiny  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from test_eval_inllm import CONFIGS, by_hand  # noqa: E402
from test_lmms_plugin import LMMS_EVAL_QWEN_1_5, lmms_setup  # noqa: E402

ARGS = {"fastv": dict(retention="0.5", k="2"), "pdrop": dict(retention="0.5", layers="1x3")}
CONTEXT = "what moves ?"


def requests(docs):
    from lmms_eval.api.instance import Instance

    gen = {"max_new_tokens": 3, "do_sample": False, "temperature": 0, "until": ["\n\n"]}
    return [Instance(request_type="generate_until", idx=0, metadata={"task": "tiny", "doc_id": i, "repeats": 1},
                     arguments=(CONTEXT, gen, lambda doc: [doc["video"]], i, "tiny", "test"))
            for i in range(len(docs))]


def answers(cls, s, method):
    torch.set_num_threads(1)
    m = cls(pretrained=str(s["ckpt"]), method=method, frames=4, batch_size=2, **ARGS[method])
    m.task_dict = {"tiny": {"test": s["docs"]}}
    return m.generate_until(requests(s["docs"]))


def reference(model_fn, inputs, config, decode):
    model = model_fn()
    aot.patch(model, config)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).split("\n\n")[0].strip()


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    def save(ckpt):
        hf_tiny.model(text_layers=4).save_pretrained(ckpt)
        hf_tiny.processor().save_pretrained(ckpt)

    return lmms_setup(tmp_path_factory.mktemp("lmms-inllm"), save)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    def save(ckpt):
        hq.model(text_layers=4).save_pretrained(ckpt)
        hq.processor(hq.CHAT_TEMPLATE).save_pretrained(ckpt)

    return lmms_setup(tmp_path_factory.mktemp("lmms-inllm-qwen"), save)


@pytest.mark.parametrize("method", sorted(ARGS))
def test_llava_plugin_in_llm_method_equals_patch_and_generate(llava, method):
    from aot.eval.lmms_plugin import AOTLlavaOneVision
    from aot.video import read_frames

    got = answers(AOTLlavaOneVision, llava, method)
    proc = hf_tiny.processor()
    n = 4 * 16 + 1  # 4 frames of the 4x4 LLM grid + the newline
    for i, doc in enumerate(llava["docs"]):
        inputs = proc(text=LMMS_EVAL_QWEN_1_5.format(placeholder="<video>", context=CONTEXT),
                      videos=[read_frames(doc["video"], 4).frames], return_tensors="pt", do_sample_frames=False)
        assert int((inputs["input_ids"] == hf_tiny.model().config.video_token_id).sum()) == n
        want = reference(lambda: hf_tiny.model(text_layers=4), inputs, CONFIGS[method], proc.decode)
        assert got[i].text == want, (method, i)  # batched by 2 = one video alone
        info = got[i].token_counts.aot
        assert info["method"] == method and info["config"]["retention"] == 0.5
        assert info["visual_tokens"] == by_hand(method, n)[-1] and info["visual_tokens_in"] == n
        assert got[i].token_counts.input_tokens == inputs["input_ids"].shape[1] - n + info["visual_tokens"]


@pytest.mark.parametrize("method", sorted(ARGS))
def test_qwen_plugin_in_llm_method_equals_patch_and_generate(qwen, method):
    from transformers.video_utils import VideoMetadata

    from aot.eval.lmms_plugin import AOTQwen2_5_VL
    from aot.video import read_frames

    got = answers(AOTQwen2_5_VL, qwen, method)
    proc = hq.processor()
    counts = []
    for i, doc in enumerate(qwen["docs"]):
        clip = read_frames(doc["video"], 4)
        meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
        inputs = proc(text=f"<s><|vision_start|><|video_pad|><|vision_end|> {CONTEXT}</s><s>", videos=[clip.frames],
                      return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
        t, h, w = inputs["video_grid_thw"][0].tolist()
        n = t * h * w // 4
        assert int((inputs["input_ids"] == hq.ids("<|video_pad|>")).sum()) == n
        counts.append(n)
        want = reference(lambda: hq.model(text_layers=4), inputs, CONFIGS[method], proc.decode)
        assert got[i].text == want, (method, i)
        info = got[i].token_counts.aot
        assert info["visual_tokens"] == by_hand(method, n)[-1] and info["visual_tokens_in"] == n
    assert len(set(counts)) > 1 or len({d["video"] for d in qwen["docs"]}) == 1  # batches mixed token counts


def test_llava_plugin_loglikelihood_with_fastv_is_the_patched_models_own(llava):
    """loglikelihood with method=fastv: -mean log p of the continuation from the patched model's own
    logits (the text after the video is never pruned, so its logits are the last rows), by hand."""
    from lmms_eval.api.instance import Instance

    from aot.eval.lmms_plugin import AOTLlavaOneVision
    from aot.video import read_frames

    torch.set_num_threads(1)
    m = AOTLlavaOneVision(pretrained=str(llava["ckpt"]), method="fastv", frames=4, **ARGS["fastv"])
    m.task_dict = {"tiny": {"test": llava["docs"]}}
    req = Instance(request_type="loglikelihood", idx=0, metadata={"task": "tiny", "doc_id": 0, "repeats": 1},
                   arguments=(CONTEXT, " a dog", lambda doc: [doc["video"]], 0, "tiny", "test"))
    result, = m.loglikelihood([req])
    value, greedy = result
    proc = hf_tiny.processor()
    prompt = LMMS_EVAL_QWEN_1_5.format(placeholder="<video>", context=CONTEXT)
    frames = read_frames(llava["docs"][0]["video"], 4).frames
    full = proc(text=prompt + " a dog<|im_end|>\n", videos=[frames], return_tensors="pt", do_sample_frames=False)
    short = proc(text=prompt, videos=[frames], return_tensors="pt", do_sample_frames=False)
    k = full["input_ids"].shape[1] - short["input_ids"].shape[1]
    model = hf_tiny.model(text_layers=4)
    aot.patch(model, CONFIGS["fastv"])
    with torch.inference_mode():
        logits = model(**full).logits[0].double()
    n = 4 * 16 + 1
    assert logits.shape[0] == full["input_ids"].shape[1] - n + by_hand("fastv", n)[-1]  # one row per kept token
    ids = full["input_ids"][0, -k:]
    logp = torch.log_softmax(logits[-k - 1:-1], -1)[torch.arange(k), ids]
    assert value == pytest.approx(float(-logp.mean()), abs=1e-5)
    assert greedy == bool((logits[-k - 1:-1].argmax(-1) == ids).all())
    info = result.token_counts.aot
    assert (info["visual_tokens"], info["visual_tokens_in"]) == (by_hand("fastv", n)[-1], n)
