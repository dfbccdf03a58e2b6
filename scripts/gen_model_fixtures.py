#!/usr/bin/env python3
"""Dumps llama.cpp's logits for a short text as a fixture for edgelm-model's real-model test.

Usage: $(scripts/ref-venv.sh)/bin/python scripts/gen_model_fixtures.py [MODEL.gguf]
Writes crates/edgelm-model/tests/data/smollm2_logits.json.

Stored per position (16 positions, one batch, logits_all): the top-64 logits with their token
ids and the log-sum-exp over the whole vocabulary (so log-softmax of any stored id is exact).
Full logits would be 16 x 49152 x 4 = 3 MB; top-64 + lse is ~40 KB and is what the comparison
needs (max |diff| over the top-64, top-1 agreement, log-prob of the reference top-1).
Two runs are recorded: flash attention on (llama.cpp's default on CPU: flash_attn_type AUTO
resolves to enabled) and off (llama-cpp-python's default), so the test can show how far apart
llama.cpp's own two attention paths are.
"""
import json
import os
import sys

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "crates/edgelm-model/tests/data/smollm2_logits.json")
TEXT = "The capital of France is Paris, and the capital of Germany is Berlin. Rome is"
PROMPT = "The capital of France is"
N_POS = 16
TOP_K = 64


def run(flash_attn):
    llm = Llama(model_path=MODEL, n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True,
                flash_attn=flash_attn, n_threads=2, verbose=False)
    toks = llm.tokenize(TEXT.encode(), add_bos=False, special=False)[:N_POS]
    llm.reset()
    llm.eval(toks)
    logits = np.array(llm.scores[: len(toks)], dtype=np.float64)
    positions = []
    for row in logits:
        top = np.argsort(-row, kind="stable")[:TOP_K]
        m = row.max()
        lse = float(m + np.log(np.exp(row - m).sum()))
        positions.append({
            "top_ids": [int(i) for i in top],
            "top_logits": [float(np.float32(row[i])) for i in top],
            "logsumexp": lse,
        })
    ptoks = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    llm.reset()
    llm.eval(ptoks)
    last = np.array(llm.scores[len(ptoks) - 1], dtype=np.float64)
    arg = int(np.argmax(last))
    return toks, positions, ptoks, arg, llm.detokenize([arg]).decode("utf-8", "replace")


def main():
    out = {"model": os.path.basename(MODEL), "text": TEXT, "prompt": PROMPT, "top_k": TOP_K}
    for name, fa in (("flash_attn", True), ("no_flash_attn", False)):
        toks, positions, ptoks, arg, piece = run(fa)
        out["tokens"] = toks
        out["prompt_tokens"] = ptoks
        out[name] = {"positions": positions, "prompt_argmax": arg, "prompt_argmax_piece": piece}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=0)
    print(f"wrote {OUT}: {len(out['tokens'])} tokens, argmax after prompt = "
          f"{out['flash_attn']['prompt_argmax']} {out['flash_attn']['prompt_argmax_piece']!r}")


if __name__ == "__main__":
    main()
