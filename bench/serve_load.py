#!/usr/bin/env python3
"""Load test of OpenAI-compatible servers: edgelm serve and llama.cpp's server
(llama-cpp-python[server]) on the same model file and the same load, interleaved.

  bench/serve_load.py load   [--clients 16] [--duration 60] [--rounds 2] [--servers edgelm,llama]
  bench/serve_load.py cache  [--turns 6]       # prompt-cache TTFT, edgelm with and without

`load`: N concurrent streaming chat clients on loopback for a bounded time (each sends a
request, reads the stream to the end, sends the next; no new request after --duration). Every
request must complete (HTTP 200 and a stream ending in [DONE]) or get a clean 429. Reports per
run: requests, 429s, failures, p50/p95 time to first token (first content delta), aggregate
completion tokens/s (all tokens over the wall time until the last stream ends) and the server's
peak RSS (the run fails if edgelm's exceeds --max-rss-mib, default 1024); then medians over the
rounds and the ratios edgelm / llama.cpp.

`cache`: one client holds a multi-turn conversation with a long system prompt against edgelm
with its prompt cache and with --no-prompt-cache; reports the median TTFT of turns 2.. each way.

Clients run on asyncio + httpx in one thread, to leave the CPUs to the servers. Needs: the
edgelm release binary (cargo build --release -p edgelm-cli), the venv of scripts/py-venv.sh
(httpx) to run this script, and llama-cpp-python[server] in ~/.cache/edgelm-ref/lcp-venv
(EDGELM_LCP_VENV overrides) for the llama.cpp side.
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
HOME = Path.home()
DEFAULT_MODEL = HOME / ".cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LCP_VENV = Path(os.environ.get("EDGELM_LCP_VENV", HOME / ".cache/edgelm-ref/lcp-venv"))

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "What are the benefits of learning a second language?",
    "Write a poem about the sea.",
    "Explain photosynthesis to a child.",
    "Describe your ideal city.",
    "Write a letter to a friend about a trip to the mountains.",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Server:
    def __init__(self, kind, model, threads, slots, ctx, extra=()):
        self.kind = kind
        self.port = free_port()
        if kind == "edgelm":
            cmd = [str(ROOT / "target/release/edgelm"), "serve", "-m", str(model), "--port",
                   str(self.port), "-t", str(threads), "--slots", str(slots), "-c", str(ctx),
                   "--queue", "64", "--alias", "m", *extra]
        else:
            # llama-cpp-python's server runs one request at a time (a lock around its one
            # context); the others wait. By default a new request interrupts the running
            # stream (which then ends without [DONE]): --interrupt_requests False keeps every
            # request whole. Flash attention on, as llama.cpp's own default on CPU.
            cmd = [str(LCP_VENV / "bin/python"), "-m", "llama_cpp.server", "--model", str(model),
                   "--port", str(self.port), "--n_threads", str(threads), "--n_threads_batch",
                   str(threads), "--n_ctx", str(ctx), "--model_alias", "m",
                   "--interrupt_requests", "False", "--flash_attn", "True", *extra]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited: {' '.join(cmd)}")
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > 180:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.3)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def one_request(client, base, messages, max_tokens, seed):
    """Streams one chat completion; returns (status, ttft_s, n_tokens, clean_end)."""
    body = {"model": "m", "messages": messages, "max_tokens": max_tokens, "temperature": 0.7,
            "seed": seed, "stream": True}
    t0 = time.perf_counter()
    ttft, n_tokens, done = None, 0, False
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None, 0, r.status_code == 429
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            for c in chunk.get("choices", []):
                if c.get("delta", {}).get("content"):
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    # One streamed delta per generated token on both servers.
                    n_tokens += 1
    return 200, ttft, n_tokens, done


async def load_run(server, clients, duration, max_tokens):
    stats = {"ok": 0, "rejected": 0, "failed": 0, "ttft": [], "tokens": 0}
    peak_rss = [rss_bytes(server.proc.pid)]
    stop_at = time.perf_counter() + duration
    t_start = time.perf_counter()

    async def sampler():
        while True:
            peak_rss[0] = max(peak_rss[0], rss_bytes(server.proc.pid))
            await asyncio.sleep(0.25)

    async def worker(i):
        n = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(600)) as client:
            while time.perf_counter() < stop_at:
                prompt = PROMPTS[(i + n) % len(PROMPTS)]
                try:
                    status, ttft, toks, clean = await one_request(
                        client, server.base, [{"role": "user", "content": prompt}],
                        max_tokens, seed=i * 1000 + n)
                except (httpx.HTTPError, json.JSONDecodeError) as e:
                    print(f"  client {i}: {type(e).__name__}: {e}", file=sys.stderr)
                    stats["failed"] += 1
                    n += 1
                    continue
                n += 1
                if status == 200 and clean and ttft is not None:
                    stats["ok"] += 1
                    stats["ttft"].append(ttft)
                    stats["tokens"] += toks
                elif status == 429:
                    stats["rejected"] += 1
                    await asyncio.sleep(0.5)
                else:
                    stats["failed"] += 1

    s = asyncio.create_task(sampler())
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t_start
    s.cancel()
    t = sorted(stats["ttft"])
    q = (lambda p: t[min(len(t) - 1, int(p * len(t)))] if t else float("nan"))
    return {
        "requests": stats["ok"], "rejected": stats["rejected"], "failed": stats["failed"],
        "ttft_p50_s": q(0.5), "ttft_p95_s": q(0.95), "tokens": stats["tokens"],
        "tokens_per_s": stats["tokens"] / wall, "wall_s": wall,
        "peak_rss_mib": peak_rss[0] / 2**20,
    }


def cmd_load(a):
    kinds = a.servers.split(",")
    if "llama" in kinds and not (LCP_VENV / "bin/python").exists():
        sys.exit(f"llama-cpp-python venv missing at {LCP_VENV}")
    runs = {k: [] for k in kinds}
    for rnd in range(a.rounds):
        for kind in kinds:
            srv = Server(kind, a.model, a.threads, a.slots, a.ctx)
            try:
                # Warm-up request (page in the weights).
                asyncio.run(load_run(srv, 1, 0.01, 4))
                r = asyncio.run(load_run(srv, a.clients, a.duration, a.max_tokens))
            finally:
                srv.stop()
            runs[kind].append(r)
            print(f"round {rnd + 1} {kind}: " + json.dumps({k: round(v, 3) if isinstance(v, float)
                                                              else v for k, v in r.items()}),
                  flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    print()
    print(f"model {a.model.name}, {a.clients} streaming clients, {a.duration:.0f} s per run, "
          f"max_tokens {a.max_tokens}, {a.threads} threads, {a.rounds} rounds interleaved; "
          f"edgelm --slots {a.slots}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print()
    print("| server | requests done | 429 | failed | TTFT p50 (s) | TTFT p95 (s) | "
          "aggregate tokens/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    names = {"edgelm": "edgelm serve", "llama": "llama-cpp-python server"}
    for k, m in med.items():
        print(f"| {names[k]} | {m['requests']:.0f} | {m['rejected']:.0f} | {m['failed']:.0f} | "
              f"{m['ttft_p50_s']:.2f} | {m['ttft_p95_s']:.2f} | {m['tokens_per_s']:.1f} | "
              f"{m['peak_rss_mib']:.0f} |")
    if "edgelm" in med and "llama" in med:
        e, l = med["edgelm"], med["llama"]
        print()
        print(f"edgelm / llama.cpp: aggregate tokens/s x{e['tokens_per_s'] / l['tokens_per_s']:.2f}, "
              f"p95 TTFT x{e['ttft_p95_s'] / l['ttft_p95_s']:.2f} (lower is better), "
              f"p50 TTFT x{e['ttft_p50_s'] / l['ttft_p50_s']:.2f}")
    bad = sum(r["failed"] for v in runs.values() for r in v)
    if bad:
        sys.exit(f"{bad} requests failed")
    peak = max((r["peak_rss_mib"] for r in runs.get("edgelm", [])), default=0)
    if peak > a.max_rss_mib:
        sys.exit(f"edgelm's RSS reached {peak:.0f} MiB, over the {a.max_rss_mib} MiB bound")


async def conversation(base, turns, max_tokens):
    system = ("You are a helpful assistant for a hardware store. You answer questions about "
              "tools, materials and repairs. Keep answers short and practical, mention safety "
              "when relevant, and never recommend brands. ") * 6
    messages = [{"role": "system", "content": system}]
    ttfts = []
    questions = ["How do I fix a squeaky door?", "What glue works on wood?",
                 "How do I cut tiles?", "Which screws for drywall?", "How to sharpen a chisel?",
                 "How do I patch a hole in plaster?", "What sandpaper grit for paint?",
                 "How to stop a dripping tap?"]
    async with httpx.AsyncClient(timeout=600) as client:
        for t in range(turns):
            messages.append({"role": "user", "content": questions[t % len(questions)]})
            body = {"model": "m", "messages": messages, "max_tokens": max_tokens,
                    "temperature": 0, "stream": True}
            t0 = time.perf_counter()
            ttft, text = None, []
            async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line[6:] != "[DONE]":
                        for c in json.loads(line[6:]).get("choices", []):
                            piece = c.get("delta", {}).get("content")
                            if piece:
                                if ttft is None:
                                    ttft = time.perf_counter() - t0
                                text.append(piece)
            ttfts.append(ttft)
            messages.append({"role": "assistant", "content": "".join(text)})
    return ttfts


def cmd_cache(a):
    res = {"with prompt cache": [], "--no-prompt-cache": []}
    for rnd in range(a.rounds):
        for name, extra in [("with prompt cache", ()), ("--no-prompt-cache", ("--no-prompt-cache",))]:
            srv = Server("edgelm", a.model, a.threads, 1, a.ctx, extra)
            try:
                ttfts = asyncio.run(conversation(srv.base, a.turns, a.max_tokens))
            finally:
                srv.stop()
            res[name] += ttfts[1:]
            print(f"round {rnd + 1} {name}: TTFT per turn (s) " +
                  " ".join(f"{x:.3f}" for x in ttfts), flush=True)
    print()
    print(f"| edgelm serve, {a.turns}-turn chat, ~300-token system prompt | median TTFT of "
          f"turns 2-{a.turns} (s) |")
    print("|---|---|")
    for name, v in res.items():
        print(f"| {name} | {statistics.median(v):.3f} |")
    w, wo = (statistics.median(v) for v in res.values())
    print(f"\nspeed-up of time to first token: x{wo / w:.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["load", "cache"])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--servers", default="edgelm,llama")
    p.add_argument("--max-rss-mib", type=float, default=1024,
                   help="fail when edgelm's peak RSS exceeds this")
    a = p.parse_args()
    if a.mode == "load":
        cmd_load(a)
    else:
        cmd_cache(a)


if __name__ == "__main__":
    main()
