"""Bad model args and unreadable videos in the lmms-eval models (issue 20): every mistake a
ValueError naming the model arg and what is allowed, before any load (the loader is replaced by one
that fails the test), and a video that cannot be read answered as an error instead of aborting the
task."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("lmms_eval")  # the `lmms` extra

import hf_tiny  # noqa: E402
from aot.demo import sample_video  # noqa: E402
from faults_media import make_video  # noqa: E402

STANDIN = "aot:dinov2-smollm2"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-lmms-faults")
    hf_tiny.model().save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


@pytest.fixture
def no_load(monkeypatch):
    import aot.models.assembled
    import aot.run

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(aot.run, "load", refuse)
    monkeypatch.setattr(aot.models.assembled, "load_dinov2_smollm2", refuse)


@pytest.mark.parametrize("model", [STANDIN, "checkpoint"])
@pytest.mark.parametrize("args, msg", [
    (dict(frames="abc"), "aot_llava_onevision: frames must be an int >= 1, got 'abc'"),
    (dict(max_frames_num="0"), "max_frames_num must be an int >= 1, got '0'"),
    (dict(threads=0), "aot_llava_onevision: threads must be an int >= 1, got 0"),
    (dict(threads="x"), "threads must be an int >= 1, got 'x'"),
    (dict(dtype="bogus"), "dtype must be one of auto, float32, bfloat16, float16, got 'bogus'"),
    (dict(device="tpu9"), "device 'tpu9' is not a device"),
    (dict(local_layer="a"), "local_layer must be an int"),
    (dict(local_layer=1, global_layer=40), "layer 40 is out of range"),
])
def test_bad_model_args_before_the_load(checkpoint, no_load, model, args, msg):
    from aot.eval.lmms_plugin import AOTLlavaOneVision

    pretrained = str(checkpoint) if model == "checkpoint" else model
    with pytest.raises(ValueError) as err:
        AOTLlavaOneVision(pretrained=pretrained, **args)
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_mistyped_local_pretrained_is_refused_at_once(no_load, tmp_path):
    from aot.eval.lmms_plugin import AOTQwen2_5_VL

    with pytest.raises(ValueError, match="pretrained '.*typo': no such folder"):
        AOTQwen2_5_VL(pretrained=str(tmp_path / "typo"))


def test_unreadable_video_is_an_error_answer_and_the_task_goes_on(checkpoint, tmp_path):
    from lmms_eval.api.instance import Instance

    from aot.eval.lmms_plugin import AOTLlavaOneVision

    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    docs = [{"video": str(sample_video())}, {"video": str(text)}, {"video": str(make_video(tmp_path / "v.mp4"))}]
    m = AOTLlavaOneVision(pretrained=str(checkpoint), method="visionzip", retention=0.5, frames=4, local_layer=1,
                          batch_size=2, threads=1)
    m.task_dict = {"tiny": {"test": docs}}
    gen = {"max_new_tokens": 2, "temperature": 0, "do_sample": False, "until": []}
    reqs = [Instance(request_type="generate_until", idx=0, metadata={"task": "tiny", "doc_id": i, "repeats": 1},
                     arguments=("what moves?", gen, lambda doc: [doc["video"]], i, "tiny", "test"))
            for i in range(3)]
    out = m.generate_until(reqs)
    assert len(out) == 3 and all(o is not None for o in out)
    assert out[1].text == "" and "not a readable video" in out[1].token_counts.aot["error"]
    for i in (0, 2):
        assert "error" not in out[i].token_counts.aot and out[i].token_counts.aot["visual_tokens"] > 0
