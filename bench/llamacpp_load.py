#!/usr/bin/env python3
"""Every quantized GGUF of a sweep loads and generates, in llama.cpp and in edgelm.

For each *.gguf under DIR (e.g. a `edgelm compress-report` output's files/): llama.cpp loads it
through llama-cpp-python and generates N tokens greedily from a prompt; then `edgelm run` does
the same. A file fails when either cannot load it, generates nothing, or produces non-finite
logits (llama.cpp's first-token logits are checked). One line per file; exit status 1 when any
file failed, 2 on bad usage.

Usage: ~/.cache/edgelm-ref/lcp-venv/bin/python bench/llamacpp_load.py DIR [--edgelm BIN]
       [--tokens N] [--prompt TEXT] [--json OUT.json]
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time


def llama_cpp_check(path, prompt, n_tokens):
    import llama_cpp  # the lcp-venv's llama-cpp-python

    t0 = time.time()
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, logits_all=False, verbose=False)
    toks = llm.tokenize(prompt.encode(), add_bos=True)
    llm.eval(toks)
    logits = llm.scores[llm.n_tokens - 1]
    if not all(math.isfinite(float(x)) for x in logits[:4096]):
        raise RuntimeError("non-finite logits")
    out = llm.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, top_k=1)
    text = out["choices"][0]["text"]
    n = out["usage"]["completion_tokens"]
    del llm
    if n < 1:
        raise RuntimeError("generated no tokens")
    return text, n, time.time() - t0


def edgelm_check(edgelm, path, prompt, n_tokens):
    t0 = time.time()
    p = subprocess.run(
        [edgelm, "run", "-m", path, "-p", prompt, "-n", str(n_tokens), "--temp", "0", "--json", "-t", "2"],
        capture_output=True, text=True, timeout=600,
    )
    if p.returncode != 0:
        raise RuntimeError(f"edgelm run exited {p.returncode}: {p.stderr.strip()[-400:]}")
    out = json.loads(p.stdout)
    if len(out["tokens"]) < 1:
        raise RuntimeError("edgelm generated no tokens")
    return out["text"], len(out["tokens"]), time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--edgelm", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "edgelm"))
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--json", dest="json_out")
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.dir, "**", "*.gguf"), recursive=True))
    if not files:
        print(f"no .gguf files under {a.dir}", file=sys.stderr)
        return 2
    if not os.access(a.edgelm, os.X_OK):
        print(f"edgelm binary not found: {a.edgelm} (cargo build --release)", file=sys.stderr)
        return 2
    results, failed = [], 0
    for f in files:
        row = {"file": f}
        for name, fn in (("llama.cpp", lambda: llama_cpp_check(f, a.prompt, a.tokens)),
                         ("edgelm", lambda: edgelm_check(a.edgelm, f, a.prompt, a.tokens))):
            try:
                text, n, secs = fn()
                row[name] = {"ok": True, "tokens": n, "text": text, "seconds": round(secs, 2)}
            except Exception as e:  # any failure to load or generate is a finding
                row[name] = {"ok": False, "error": str(e)}
        ok = row["llama.cpp"]["ok"] and row["edgelm"]["ok"]
        failed += not ok
        results.append(row)
        show = lambda r: (f"ok {r['tokens']} tok {r['text']!r}" if r["ok"] else f"FAILED: {r['error']}")
        print(f"{os.path.basename(f):32s} llama.cpp {show(row['llama.cpp'])} | edgelm {show(row['edgelm'])}", flush=True)
    print(f"{len(files) - failed}/{len(files)} files load and generate in both llama.cpp and edgelm")
    if a.json_out:
        with open(a.json_out, "w") as fh:
            json.dump(results, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
