#!/usr/bin/env python3
"""Side-by-side speed and memory: edgelm against llama.cpp's own llama-bench.

Same GGUF file, same thread count, same tests (pp512 and tg128 by default), runs interleaved
(the order alternates every repetition), medians and ratios, plus each process's peak RSS
(from wait4) and this machine's memory read bandwidth with the decode limit it implies.

Models: the default SmolLM2-135M-Instruct Q4_1 file, and Q8_0 and Q4_K_M versions of it made
by llama.cpp's own quantizer (llama-quantize --allow-requantize, from the Q4_1 file: the same
bytes for both engines; their quality is not the point here).

llama.cpp's tools are built by ../shared/tools/llamacpp-tools.sh (the reference for every speed
figure; a per-token loop through llama-cpp-python under-reports llama.cpp's decode speed).

Usage: python3 bench/compare.py [-t 2] [-r 5] [-p 512] [-n 128] [--models q4_1,q8_0,q4_k_m]
                                [--write docs/performance.md]
Only the Python standard library is needed.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class MeasuredPopen(subprocess.Popen):
    """Popen that reaps its child with os.wait4 and keeps ru_maxrss (KiB on Linux)."""

    def _try_wait(self, wait_flags):
        try:
            pid, sts, ru = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            pid, sts = self.pid, 0
            ru = None
        if pid == self.pid and ru is not None:
            self._edgelm_maxrss = ru.ru_maxrss * 1024
        return (pid, sts)


def measured(cmd):
    p = MeasuredPopen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
    return out, getattr(p, "_edgelm_maxrss", None)


def edgelm_bin():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "edgelm-cli"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "edgelm")


def llama_tools():
    out = subprocess.run(
        ["bash", str(SHARED / "tools" / "llamacpp-tools.sh")],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout.strip().splitlines()[-1]
    return Path(out)


def models(edgelm, tools, wanted):
    base = subprocess.run([edgelm, "fetch"], check=True, stdout=subprocess.PIPE,
                          text=True).stdout.strip()
    out = {"q4_1": Path(base)}
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgelm-ref" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    for name, ty in [("q8_0", "Q8_0"), ("q4_k_m", "Q4_K_M")]:
        if name not in wanted:
            continue
        dst = cache / f"SmolLM2-135M-Instruct.{ty}.from-Q4_1.gguf"
        if not dst.exists():
            tmp = dst.with_suffix(".tmp")
            log(f"llama-quantize {ty} -> {dst}")
            subprocess.run([str(tools / "llama-quantize"), "--allow-requantize", base, str(tmp), ty],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tmp.rename(dst)
        out[name] = dst
    return {k: v for k, v in out.items() if k in wanted}


def ours(edgelm, model, t, p, n):
    out, rss = measured([edgelm, "bench", "-m", str(model), "-p", str(p), "-n", str(n),
                         "-r", "1", "-t", str(t), "--json"])
    d = json.loads(out)
    res = {r["test"]: r["median_ts"] for r in d["results"]}
    return res[f"pp{p}"], res[f"tg{n}"], rss, d.get("kernels")


def theirs(tools, model, t, p, n):
    out, rss = measured([str(tools / "llama-bench"), "-m", str(model), "-p", str(p), "-n", str(n),
                         "-r", "1", "-t", str(t), "-o", "json"])
    d = json.loads(out)
    pp = next(r["avg_ts"] for r in d if r["n_prompt"] == p and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in d if r["n_gen"] == n and r["n_prompt"] == 0)
    return pp, tg, rss


def bandwidth(edgelm, model, t):
    out, _ = measured([edgelm, "bench", "-m", str(model), "-p", "0", "-n", "0", "--membw",
                       "-t", str(t), "--json"])
    d = json.loads(out)
    b = d["bandwidth"][0]
    return b["read_bytes_per_s"], d["decode_bytes_per_token"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--models", default="q4_1,q8_0,q4_k_m")
    ap.add_argument("--write", help="Markdown file whose results section is replaced")
    a = ap.parse_args()

    edgelm = edgelm_bin()
    tools = llama_tools()
    ms = models(edgelm, tools, a.models.split(","))
    rows = []
    for name, path in ms.items():
        e_pp, e_tg, e_rss, l_pp, l_tg, l_rss = [], [], [], [], [], []
        kern = None
        for rep in range(a.reps):
            order = ["ours", "theirs"] if rep % 2 == 0 else ["theirs", "ours"]
            for who in order:
                if who == "ours":
                    pp, tg, rss, kern = ours(edgelm, path, a.threads, a.p, a.n)
                    e_pp.append(pp), e_tg.append(tg), e_rss.append(rss)
                else:
                    pp, tg, rss = theirs(tools, path, a.threads, a.p, a.n)
                    l_pp.append(pp), l_tg.append(tg), l_rss.append(rss)
            log(f"{name} rep {rep + 1}: edgelm pp {e_pp[-1]:.1f} tg {e_tg[-1]:.1f} | "
                f"llama.cpp pp {l_pp[-1]:.1f} tg {l_tg[-1]:.1f}")
        bw, dec_bytes = bandwidth(edgelm, path, a.threads)
        limit = bw / dec_bytes
        med = statistics.median
        rows.append({
            "model": name, "file": path.name, "bytes": path.stat().st_size, "kernels": kern,
            "pp_ours": med(e_pp), "pp_theirs": med(l_pp),
            "tg_ours": med(e_tg), "tg_theirs": med(l_tg),
            "pp_ours_all": e_pp, "pp_theirs_all": l_pp, "tg_ours_all": e_tg, "tg_theirs_all": l_tg,
            "rss_ours": max(e_rss), "rss_theirs": max(l_rss),
            "bw": bw, "decode_bytes": dec_bytes, "limit": limit,
        })

    cmd = (f"python3 bench/compare.py -t {a.threads} -r {a.reps} -p {a.p} -n {a.n} "
           f"--models {a.models}")
    md = render(rows, a, cmd)
    print(md)
    if a.write:
        write_section(Path(a.write), md)
    print(json.dumps(rows, indent=1), file=sys.stderr)


def render(rows, a, cmd):
    mib = 1024 * 1024
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()}, {a.threads} threads, "
        f"{a.reps} interleaved runs each (medians), with `{cmd}`.",
        "",
        f"| model file | size | edgelm pp{a.p} t/s | llama.cpp pp{a.p} t/s | ratio | "
        f"edgelm tg{a.n} t/s | llama.cpp tg{a.n} t/s | ratio | edgelm peak RSS | "
        f"llama.cpp peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['bytes'] / mib:.1f} MiB | {r['pp_ours']:.1f} | "
            f"{r['pp_theirs']:.1f} | **{r['pp_ours'] / r['pp_theirs']:.2f}×** | "
            f"{r['tg_ours']:.1f} | {r['tg_theirs']:.1f} | "
            f"**{r['tg_ours'] / r['tg_theirs']:.2f}×** | {r['rss_ours'] / mib:.0f} MiB | "
            f"{r['rss_theirs'] / mib:.0f} MiB |")
    lines += [
        "",
        "Decode against the memory-bandwidth limit (read bandwidth measured by "
        "`edgelm bench --membw` with the same threads; limit = bandwidth ÷ weight bytes read "
        "per token):",
        "",
        "| model file | read bandwidth | weights read / token | limit t/s | edgelm | llama.cpp |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['bw'] / 1e9:.1f} GB/s | {r['decode_bytes'] / 1e6:.1f} MB | "
            f"{r['limit']:.0f} | {100 * r['tg_ours'] / r['limit']:.0f} % | "
            f"{100 * r['tg_theirs'] / r['limit']:.0f} % |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- bench/compare.py results: begin -->"
END = "<!-- bench/compare.py results: end -->"


def write_section(path, md):
    text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{md}{END}{tail}")


if __name__ == "__main__":
    main()
