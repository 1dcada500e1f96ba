"""``aot serve`` end to end: the OpenAI-compatible server it starts answers a chat request with a video,
and the prompt it ran on holds exactly aot.budget video tokens (one engine start, a subprocess)."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import tiny

import aot

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_aot_serve_answers_a_video_chat_request(tmp_path):
    import cv2
    import httpx

    import hf_tiny_qwen as hq

    model = tiny.save_qwen(tmp_path / "model")
    hq.processor(chat_template=hq.CHAT_TEMPLATE).save_pretrained(model)
    (tmp_path / "t.jinja").write_text(hq.CHAT_TEMPLATE)
    frames = tiny.video(8)
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (32, 32))
    for f in frames:
        writer.write(f[:, :, ::-1].copy())
    writer.release()
    port = free_port()
    cmd = [sys.executable, "-m", "aot", "serve", str(model), "--retention", "0.25", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--gpu-memory-utilization", "0.1",
           "--max-num-seqs", "2", "--chat-template", str(tmp_path / "t.jinja")]
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(300):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
        body = {"model": str(model), "max_tokens": 4, "temperature": 0.0,
                "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                          {"type": "text", "text": "what is in the video ?"}]}]}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        # the chat template: <s> <|vision_start|> pads <|vision_end|> what is in the video ? </s> <s>
        text_tokens = 1 + 1 + 1 + 6 + 1 + 1
        assert usage["prompt_tokens"] == text_tokens + aot.budget(0.25, 4, 16)
        assert usage["completion_tokens"] == 4
        printed = (tmp_path / "server.log").read_text()
        assert "aot serve: --video-pruning-rate 0.75" in printed
        assert json.dumps({"architectures": ["AotQwen2_5_VLForConditionalGeneration"],
                           "aot": {"method": "aot", "retention": 0.25}}) in printed
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
