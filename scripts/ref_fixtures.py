#!/usr/bin/env python3
"""Writes the reference fixtures that crates/edgelm-cli/tests/reference.rs checks edgelm against.

Three parts, each a file (or files) in crates/edgelm-cli/tests/data/reference/:

  logits16    logits16.json, logits16_llamacpp.f32, logits16_exact.f32
              The first 16 tokens of WikiText-2 raw test, tokenized by llama.cpp as a prompt
              (no BOS for this model). llama.cpp's logits at all 16 positions and the exact
              float64 forward's (scripts/ref_exact.py), both stored as little-endian f32,
              row-major [16, V]; the JSON holds the token ids, KL(exact || llama.cpp) per
              position (float64, full vocabulary), max |llama.cpp - exact|, and the
              llama-cpp-python version and build flags.
  greedy      greedy.json: chat prompts rendered with the GGUF chat template by
              llama-cpp-python's own Jinja2 formatter (add_generation_prompt; the template's
              default system prompt), tokenized with special tokens parsed; llama.cpp greedy
              (argmax) for up to 64 tokens, stopping at an end-of-generation token. Per step:
              llama.cpp's top-5 (id, logit) and top-2 margin, the exact forward's argmax and
              top-2 margin along the same sequence, and KL(exact || llama.cpp).
  perplexity  perplexity.json: llama.cpp's own llama-perplexity (-c 512 -t 2) with
              --chunks 10 (the figure CI checks) and on the full file.

Run with the reference venv (scripts/ref-venv.sh):
  ~/.cache/edgelm-ref/venv/bin/python scripts/ref_fixtures.py [--parts logits16,greedy,perplexity]
      [--ppl-full-log FILE]   # reuse an existing full-file llama-perplexity log instead of rerunning
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_exact  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT_DIR = os.path.join(REPO, "crates", "edgelm-cli", "tests", "data", "reference")
DATA_DIR = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))
WIKITEXT = os.path.join(DATA_DIR, "wikitext-2-raw-test.txt")
LLAMA_BIN = os.path.join(os.path.expanduser("~"), ".cache", "edgelm-ref", "llama.cpp", "build",
                         "bin")
SEED = 1234
N_CTX = 512
N_THREADS = 2
N_GEN = 64

PROMPTS = [
    "What is the capital of France?",
    "Who wrote the novel Pride and Prejudice?",
    "Write a short poem about the sea.",
    "What is 17 + 25?",
    "Translate 'Good morning, how are you?' into French.",
    "Write a Python function that returns the factorial of a number.",
    "List three fruits that are red.",
    "Explain, in two or three sentences, why the sky looks blue during the day and red at "
    "sunset. Use simple words that a ten-year-old would understand, and end with a question "
    "for the reader.",
    "What is the boiling point of water in degrees Celsius?",
    "Give me three tips for sleeping better.",
]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def llama_info() -> dict:
    import llama_cpp

    return {
        "llama_cpp_python_version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "build_flags": "CMAKE_ARGS=-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                       "-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF "
                       "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF (scripts/ref-venv.sh)",
        "machine": platform.machine(),
    }


def open_llama(model: str, flash_attn: bool = True):
    """llama.cpp as its own tools run it: flash attention on (llama.cpp's default
    flash_attn_type AUTO resolves to enabled on CPU; llama-cpp-python's default forces it
    off, so we ask for it)."""
    import llama_cpp

    return llama_cpp.Llama(model_path=model, logits_all=True, n_ctx=N_CTX, n_threads=N_THREADS,
                           n_threads_batch=N_THREADS, seed=SEED, flash_attn=flash_attn,
                           verbose=False)


def model_info(model: str) -> dict:
    return {"file": os.path.basename(model), "sha256": sha256_file(model),
            "size_bytes": os.path.getsize(model)}


def write_json(name: str, obj) -> None:
    path = os.path.join(OUT_DIR, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def part_logits16(model: str, exact: ref_exact.ExactModel) -> None:
    llm = open_llama(model)
    text = open(WIKITEXT, encoding="utf-8").read()
    # Tokenize a prefix generous enough for 16 tokens (whole words, so no split at the cut).
    ids = llm.tokenize(text[:2000].encode("utf-8"), add_bos=False, special=False)[:16]
    assert len(ids) == 16, "fewer than 16 tokens in the WikiText prefix"
    llm.reset()
    llm.eval(ids)
    lc = np.array(llm.scores[:16], dtype=np.float64)
    ex = exact.forward(ids)
    kl = ref_exact.kl(ex, lc)
    # llama.cpp once more, token by token (its GEMV path instead of the batched one): how much
    # llama.cpp's KL to the exact computation moves under a mere change of kernels.
    llm.reset()
    for t in ids:
        llm.eval([t])
    seq = np.array(llm.scores[:16], dtype=np.float64)
    kl_seq = ref_exact.kl(ex, seq)
    # And with flash attention off (llama-cpp-python's default): another build-dependent path.
    nofa = open_llama(model, flash_attn=False)
    nofa.eval(ids)
    lc_nofa = np.array(nofa.scores[:16], dtype=np.float64)
    kl_nofa = ref_exact.kl(ex, lc_nofa)
    lc.astype("<f4").tofile(os.path.join(OUT_DIR, "logits16_llamacpp.f32"))
    ex.astype("<f4").tofile(os.path.join(OUT_DIR, "logits16_exact.f32"))
    d = np.abs(lc - ex)
    obj = {
        "description": "First 16 tokens of WikiText-2 raw test; logits at every position from "
                       "llama.cpp (llama-cpp-python eval, logits_all) and from the exact float64 "
                       "forward (scripts/ref_exact.py). Binary files: little-endian f32, "
                       "row-major [n_tokens, n_vocab].",
        "command": "~/.cache/edgelm-ref/venv/bin/python scripts/ref_fixtures.py --parts logits16",
        "model": model_info(model),
        "llama_cpp": llama_info(),
        "llama_params": {"n_ctx": N_CTX, "n_threads": N_THREADS, "seed": SEED,
                         "logits_all": True, "add_bos": False, "flash_attn": True},
        "n_vocab": int(lc.shape[1]),
        "token_ids": [int(t) for t in ids],
        "text": llm.detokenize(ids).decode("utf-8", "replace"),
        "files": {"llamacpp": "logits16_llamacpp.f32", "exact": "logits16_exact.f32"},
        "kl_exact_llamacpp": [float(v) for v in kl],
        "kl_exact_llamacpp_mean": float(kl.mean()),
        "max_abs_diff_llamacpp_exact": float(d.max()),
        "max_abs_diff_llamacpp_exact_per_position": [float(v) for v in d.max(axis=1)],
        "mean_abs_diff_llamacpp_exact": float(d.mean()),
        "token_by_token": {
            "kl_exact_llamacpp_mean": float(kl_seq.mean()),
            "max_abs_diff_vs_batched": float(np.abs(seq - lc).max()),
            "max_abs_diff_vs_exact": float(np.abs(seq - ex).max()),
        },
        "flash_attn_off": {
            "kl_exact_llamacpp_mean": float(kl_nofa.mean()),
            "max_abs_diff_vs_flash_attn_on": float(np.abs(lc_nofa - lc).max()),
            "max_abs_diff_vs_exact": float(np.abs(lc_nofa - ex).max()),
        },
        "top1_llamacpp": [int(v) for v in lc.argmax(axis=1)],
        "top1_exact": [int(v) for v in ex.argmax(axis=1)],
        "top2_margin_exact": [float(v) for v in ref_exact.top2_margin(ex)],
    }
    write_json("logits16.json", obj)
    print(f"logits16: mean KL(exact||llama.cpp) = {kl.mean():.3e}, max |diff| = {d.max():.4f}")


def part_greedy(model: str, exact: ref_exact.ExactModel) -> None:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = open_llama(model)
    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    vocab = llm._model.vocab
    eos = llm._model.token_get_text(llm.token_eos())
    bos = llm._model.token_get_text(llm.token_bos())
    fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                              add_generation_prompt=True)
    cases = []
    for prompt in PROMPTS:
        rendered = fmt(messages=[{"role": "user", "content": prompt}]).prompt
        ids = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        gen: list[int] = []
        steps = []
        lc_rows = []
        stop = "length"
        for _ in range(N_GEN):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            tok = int(np.argmax(row))
            lc_rows.append(row)
            order = np.argsort(-row, kind="stable")[:5]
            steps.append({"token": tok,
                          "top5": [[int(i), float(row[i])] for i in order],
                          "margin_llamacpp": float(row[order[0]] - row[order[1]])})
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                stop = "eog"
                break
            gen.append(tok)
            if len(gen) == N_GEN:
                break
            llm.eval([tok])
        # The exact forward along the same sequence: the logits predicting step i sit at
        # position len(ids) - 1 + i.
        seq = ids + [s["token"] for s in steps[:-1]]
        ex = exact.forward(seq)[len(ids) - 1:]
        lc = np.stack(lc_rows)
        kl = ref_exact.kl(ex, lc)
        margins = ref_exact.top2_margin(ex)
        for i, s in enumerate(steps):
            top2 = np.argsort(-ex[i], kind="stable")[:2]
            s["exact_top2"] = [[int(j), float(ex[i, j])] for j in top2]
            s["argmax_exact"] = int(top2[0])
            s["margin_exact"] = float(margins[i])
            s["kl_exact_llamacpp"] = float(kl[i])
        text = llm.detokenize(gen).decode("utf-8", "replace")
        n_dis = sum(1 for s in steps if s["argmax_exact"] != s["token"])
        print(f"greedy: {prompt[:40]!r}: {len(gen)} tokens ({stop}); exact argmax differs at "
              f"{n_dis} steps; mean KL {kl.mean():.2e}; text {text[:60]!r}")
        cases.append({"prompt": prompt, "rendered_prompt": rendered, "prompt_ids": ids,
                      "generated_ids": gen, "generated_text": text, "stop": stop,
                      "kl_exact_llamacpp_mean": float(kl.mean()), "steps": steps})
    obj = {
        "description": "Greedy chat generations by llama.cpp (argmax of its logits, token by "
                       "token) with per-step top-5, top-2 margins, and the exact float64 "
                       "forward's argmax/margin/KL along the same sequence. 'steps' has one "
                       "entry per sampled token, including a final end-of-generation token "
                       "when stop == 'eog' (not part of generated_ids).",
        "command": "~/.cache/edgelm-ref/venv/bin/python scripts/ref_fixtures.py --parts greedy",
        "model": model_info(model),
        "llama_cpp": llama_info(),
        "llama_params": {"n_ctx": N_CTX, "n_threads": N_THREADS, "seed": SEED,
                         "sampling": "greedy (argmax)", "max_tokens": N_GEN,
                         "flash_attn": True},
        "chat_formatter": "llama_cpp.llama_chat_format.Jinja2ChatFormatter(GGUF "
                          "tokenizer.chat_template, add_generation_prompt=True); tokenized "
                          "with special=True, add_bos=False",
        "cases": cases,
    }
    write_json("greedy.json", obj)


PPL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
CHUNKS_RE = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")


def parse_ppl_log(log: str) -> dict:
    m = PPL_RE.search(log)
    c = CHUNKS_RE.search(log)
    if not m or not c:
        raise RuntimeError("llama-perplexity output has no 'Final estimate' line:\n" + log[-2000:])
    return {"ppl": float(m.group(1)), "ppl_error": float(m.group(2)),
            "n_chunks": int(c.group(1)), "n_ctx": int(c.group(2))}


def run_ppl(model: str, chunks: int | None, extra: list[str] | None = None) -> dict:
    cmd = [os.path.join(LLAMA_BIN, "llama-perplexity"), "-m", model, "-f", WIKITEXT,
           "-c", str(N_CTX), "-t", str(N_THREADS)]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    cmd += extra or []
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = parse_ppl_log(out.stdout + out.stderr)
    r["seconds"] = round(time.time() - t0, 1)
    r["command"] = shlex.join(cmd)
    return r


def part_perplexity(model: str, full_log: str | None) -> None:
    ten = run_ppl(model, 10)
    print(f"perplexity --chunks 10: {ten}")
    # The quantized KV cache (edgelm --cache-type q8_0), 3 windows.
    q8 = run_ppl(model, 3, ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"])
    print(f"perplexity --chunks 3, Q8_0 cache: {q8}")
    if full_log:
        full = parse_ppl_log(open(full_log, encoding="utf-8").read())
        full["command"] = shlex.join(
            ["nice", "-n", "10", os.path.join(LLAMA_BIN, "llama-perplexity"), "-m", model, "-f",
             WIKITEXT, "-c", str(N_CTX), "-t", str(N_THREADS)])
        full["log"] = full_log
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)",
                         open(full_log, encoding="utf-8").read())
        if wall:
            full["wall_clock"] = wall.group(1)
    else:
        full = run_ppl(model, None)
    print(f"perplexity full: {full}")
    obj = {
        "description": "llama.cpp's llama-perplexity on WikiText-2 raw test (no BOS for this "
                       "model; each chunk of n_ctx tokens scores its second half).",
        "command": "~/.cache/edgelm-ref/venv/bin/python scripts/ref_fixtures.py --parts "
                   "perplexity",
        "model": model_info(model),
        "data": {"file": "wikitext-2-raw-test.txt", "sha256": sha256_file(WIKITEXT)},
        "chunks10": ten,
        "full": full,
        "q8_0_cache_chunks3": q8,
    }
    write_json("perplexity.json", obj)


def main() -> int:
    ap = argparse.ArgumentParser(description="write edgelm's reference fixtures")
    ap.add_argument("--model", default=ref_exact.default_model_path())
    ap.add_argument("--parts", default="logits16,greedy,perplexity")
    ap.add_argument("--ppl-full-log", default=None,
                    help="parse this full-file llama-perplexity log instead of rerunning")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    os.makedirs(OUT_DIR, exist_ok=True)
    exact = ref_exact.ExactModel(args.model) if parts & {"logits16", "greedy"} else None
    if "logits16" in parts:
        part_logits16(args.model, exact)
    if "greedy" in parts:
        part_greedy(args.model, exact)
    if "perplexity" in parts:
        part_perplexity(args.model, args.ppl_full_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
