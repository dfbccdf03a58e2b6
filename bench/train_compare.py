#!/usr/bin/env python3
"""Training step time and peak memory: edgelm-train against PyTorch CPU on the same model
shapes, batch and thread count. Runs alternate (edgelm, PyTorch, edgelm, ...) for --rounds
rounds; each run does --steps steps and reports its median step; the table shows the medians
over rounds, the speed ratio (PyTorch ms / edgelm ms: > 1 means edgelm is faster) and the
peak resident memory of each process (/usr/bin/time).

edgelm: `cargo run --release -p edgelm-train --example train_step` (f32 master weights
dequantized from the GGUF). PyTorch: `scripts/torch_grad.py bench` (random f32 weights of
the same config, scaled_dot_product_attention, torch.optim.AdamW).

Usage (with the venv of scripts/torch-venv.sh):
  ~/.cache/edgelm-venv-torch/bin/python bench/train_compare.py [--model M.gguf]
      [--batch 2] [--seq-len 64] [--steps 5] [--threads 2] [--rounds 3]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time; returns (stdout, peak RSS in MiB)."""
    r = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, capture_output=True,
                       text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    rss = int(re.search(r"MAXRSS (\d+)", r.stderr).group(1)) / 1024
    return r.stdout, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.expanduser(
        "~/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "edgelm-train", "--example",
                    "train_step"], check=True, cwd=ROOT)
    exe = os.path.join(ROOT, "target/release/examples/train_step")
    cfg = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    shape = [str(a.batch), str(a.seq_len), str(a.steps), str(a.threads)]
    ours, theirs, ours_rss, theirs_rss = [], [], [], []
    for r in range(a.rounds):
        out, rss = timed([exe, a.model] + shape, env=dict(os.environ, EDGELM_CONFIG_OUT=cfg))
        ms = float(re.search(r"step (\d+) ms", out.splitlines()[-1]).group(1))
        ours.append(ms)
        ours_rss.append(rss)
        out, rss = timed([sys.executable, "scripts/torch_grad.py", "bench", "--config", cfg,
                          "--batch", shape[0], "--seq-len", shape[1], "--steps", shape[2],
                          "--threads", shape[3]])
        theirs.append(float(re.search(r"median_step_ms ([\d.]+)", out).group(1)))
        theirs_rss.append(rss)
        print(f"round {r + 1}: edgelm {ours[-1]:.0f} ms, pytorch {theirs[-1]:.0f} ms",
              file=sys.stderr)
    import torch
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"model {os.path.basename(a.model)}, B={a.batch} T={a.seq_len}, "
          f"{a.threads} threads, {a.steps} steps x {a.rounds} rounds, torch {torch.__version__}")
    print("| | step (median ms) | tokens/s | peak RSS (MiB) |")
    print("|---|---|---|---|")
    tok = a.batch * a.seq_len
    print(f"| edgelm | {o:.0f} | {tok / o * 1e3:.1f} | {max(ours_rss):.0f} |")
    print(f"| PyTorch | {t:.0f} | {tok / t * 1e3:.1f} | {max(theirs_rss):.0f} |")
    print(f"speed ratio (PyTorch ms / edgelm ms): {t / o:.2f}x")


if __name__ == "__main__":
    main()
