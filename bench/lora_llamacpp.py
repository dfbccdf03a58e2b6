#!/usr/bin/env python3
"""Does llama.cpp load edgelm's LoRA adapter, and does it change the logits as edgelm does?

Runs the same tokens through
  - llama.cpp (llama-cpp-python) on BASE, and on BASE with `lora_path=ADAPTER`,
  - edgelm-model (`dump_logits` example) on BASE, and with `--lora ADAPTER`,
and prints, over every position's logits:
  - max |edgelm + lora − llama.cpp + lora|  (the adapter applied by both engines),
  - max |edgelm base − llama.cpp base|     (the floor: the engines' own rounding difference),
  - max |Δ_edgelm − Δ_llama.cpp| against max |Δ| where Δ = logits with the adapter − without
    (how much of the adapter's effect the two engines agree on),
  - edgelm's own sensitivity to a 1e-5 change of the adapter's scale (the rounding floor
    on a quantized base, where activations are quantized to Q8 before each product),
  - top-1 agreement with the adapter.

Usage (after `cargo build --release -p edgelm-model --example dump_logits`):
  ~/.cache/edgelm-ref/lcp-venv/bin/python bench/lora_llamacpp.py --adapter OUT/adapter.gguf \
      [--model ~/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--n 64]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.expanduser("~/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


def llama_logits(model, tokens, lora=None):
    import llama_cpp

    kw = dict(model_path=model, logits_all=True, n_ctx=max(256, len(tokens) + 8), n_threads=2,
              n_threads_batch=2, flash_attn=True, verbose=False)
    if lora:
        kw["lora_path"] = lora
    llm = llama_cpp.Llama(**kw)
    llm.reset()
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    del llm
    return out


def edgelm_logits(model, tokens, lora=None, scale=1.0):
    exe = os.path.join(ROOT, "target", "release", "examples", "dump_logits")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        cmd = [exe, model, out] + (["--lora", lora, "--scale", repr(scale)] if lora else [])
        cmd += [str(t) for t in tokens]
        subprocess.run(cmd, check=True)
        v = np.fromfile(out, dtype="<f4").astype(np.float64)
    return v.reshape(len(tokens), -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--n", type=int, default=64, help="tokens")
    ap.add_argument("--offset", type=int, default=1_000_000,
                    help="character offset into tinyshakespeare (the held-out end)")
    args = ap.parse_args()
    import llama_cpp

    text = open(TEXT, encoding="utf-8").read()
    tok = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    tokens = tok.tokenize(text[args.offset: args.offset + 4 * args.n].encode(), add_bos=False,
                          special=False)[: args.n]
    del tok
    lb = llama_logits(args.model, tokens)
    la = llama_logits(args.model, tokens, args.adapter)
    eb = edgelm_logits(args.model, tokens)
    ea = edgelm_logits(args.model, tokens, args.adapter)

    def mx(x):
        return float(np.abs(x).max())

    d_lora = mx(ea - la)
    d_base = mx(eb - lb)
    delta_l, delta_e = la - lb, ea - eb
    print(f"model {os.path.basename(args.model)}, adapter {args.adapter}, {len(tokens)} tokens "
          f"(tinyshakespeare from character {args.offset})")
    print(f"max |logit| with the adapter (llama.cpp):           {mx(la):.3f}")
    print(f"adapter's effect, max |Δ| llama.cpp / edgelm:       {mx(delta_l):.4f} / "
          f"{mx(delta_e):.4f}")
    print(f"max |edgelm+lora − llama.cpp+lora|:                  {d_lora:.4f}")
    print(f"max |edgelm base − llama.cpp base| (engines' floor): {d_base:.4f}")
    print(f"max |Δ_edgelm − Δ_llama.cpp|:                        {mx(delta_e - delta_l):.4f}")
    rel = np.linalg.norm(delta_e - delta_l) / max(np.linalg.norm(delta_l), 1e-30)
    print(f"‖Δ_edgelm − Δ_llama.cpp‖ / ‖Δ_llama.cpp‖:             {rel:.4f}")
    # How far a perturbation far below f32 summation-order noise in the adapter's output moves
    # edgelm's own logits: quantized activations (Q8_1 for Q4_1 weights) round to the other
    # side of a step somewhere and the difference grows through the layers.
    ep = edgelm_logits(args.model, tokens, args.adapter, scale=1.0 + 1e-5)
    print(f"edgelm's own sensitivity, max |logits(scale 1+1e-5) − logits(scale 1)|: "
          f"{mx(ep - ea):.4f}")
    top1 = float((ea.argmax(1) == la.argmax(1)).mean())
    print(f"top-1 agreement with the adapter:                    {top1:.3f}")
    if mx(delta_l) == 0.0:
        print("llama.cpp's logits did not change with the adapter: not applied", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
