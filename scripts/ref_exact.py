#!/usr/bin/env python3
"""Exact float64 forward of a llama-architecture GGUF model (the "exact computation").

The weights are dequantized once with the gguf package's reference dequantizer
(`gguf.quants.dequantize`) and every operation afterwards runs in float64 with no
quantization of activations. This is the yardstick both llama.cpp and edgelm are
measured against: a quantized model file defines a function, and this script
computes that function as exactly as float64 allows.

Architecture (llama.cpp's LLM_ARCH_LLAMA graph, src/models/llama.cpp):
  x = token_embd[tokens]                                   # x: [T, C]
  for each layer:
    h = rmsnorm(x) * attn_norm
    q, k, v = h Wq^T, h Wk^T, h Wv^T                       # [T, H*D], [T, KV*D], [T, KV*D]
    q, k = rope_norm(q), rope_norm(k)                      # adjacent pairs (LLAMA_ROPE_TYPE_NORM)
    a = softmax(q k^T / sqrt(D) + causal mask) v           # GQA: head h reads kv head h // (H/KV)
    x = x + a Wo^T
    h = rmsnorm(x) * ffn_norm
    x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
  logits = (rmsnorm(x) * output_norm) Wout^T               # Wout = token_embd when tied

GGUF llama weights are stored with Q/K rows permuted so that llama.cpp's NORM rope
(rotating the adjacent pair (2i, 2i+1)) reproduces the HF rotate-half rope; so NORM is
the right mode here.

Usage as a module:  from ref_exact import ExactModel; m = ExactModel(path); m.forward(ids)
Usage as a script:  ref_exact.py [--model PATH] [--validate]  (compares with llama.cpp)
Run with the reference venv (scripts/ref-venv.sh).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import gguf


def default_model_path() -> str:
    home = os.environ.get("EDGELM_HOME")
    if home:
        base = os.path.join(home, "models")
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(cache, "edgelm", "models")
    return os.path.join(base, "SmolLM2-135M-Instruct.Q4_1.gguf")


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key {key!r} missing")
        return default
    return f.contents()


class ExactModel:
    """The llama forward in float64 over dequantized GGUF weights."""

    def __init__(self, path: str | None = None):
        self.path = path or default_model_path()
        r = gguf.GGUFReader(self.path)
        arch = _field(r, "general.architecture")
        if arch != "llama":
            raise ValueError(f"architecture {arch!r} is not llama")
        p = arch + "."
        self.n_layer = int(_field(r, p + "block_count"))
        self.n_embd = int(_field(r, p + "embedding_length"))
        self.n_ff = int(_field(r, p + "feed_forward_length"))
        self.n_head = int(_field(r, p + "attention.head_count"))
        self.n_head_kv = int(_field(r, p + "attention.head_count_kv", self.n_head))
        self.eps = float(_field(r, p + "attention.layer_norm_rms_epsilon"))
        self.freq_base = float(_field(r, p + "rope.freq_base", 10000.0))
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = int(_field(r, p + "rope.dimension_count", self.head_dim))
        # llama.cpp stores eps and freq_base as f32; use those exact values.
        self.eps = float(np.float32(self.eps))
        self.freq_base = float(np.float32(self.freq_base))

        self.w: dict[str, np.ndarray] = {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            # numpy shape is (ne[n-1], ..., ne[0]) = (out, in) for matrices.
            self.w[t.name] = np.ascontiguousarray(a, dtype=np.float64).reshape(
                [int(d) for d in reversed(t.shape)] if len(t.shape) > 1 else [int(t.shape[0])]
            )
        self.out_w = self.w.get("output.weight", self.w["token_embd.weight"])
        self.n_vocab = self.w["token_embd.weight"].shape[0]

    def _rmsnorm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        # x: [T, C]
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(ms + self.eps) * w

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # x: [T, nh, D]; NORM mode rotates adjacent pairs (2i, 2i+1) for 2i < n_rot.
        d = self.n_rot
        inv = self.freq_base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [D/2]
        ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, D/2]
        c = np.cos(ang)[:, None, :]
        s = np.sin(ang)[:, None, :]
        out = x.copy()
        x0 = x[..., 0:d:2]
        x1 = x[..., 1:d:2]
        out[..., 0:d:2] = x0 * c - x1 * s
        out[..., 1:d:2] = x0 * s + x1 * c
        return out

    def forward(self, tokens) -> np.ndarray:
        """Logits for every position of `tokens` (positions 0..T-1): float64 [T, V]."""
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError("token id out of range")
        T = ids.size
        H, KV, D = self.n_head, self.n_head_kv, self.head_dim
        group = H // KV
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        x = self.w["token_embd.weight"][ids]  # x: [T, C]
        for il in range(self.n_layer):
            b = f"blk.{il}."
            h = self._rmsnorm(x, self.w[b + "attn_norm.weight"])
            q = (h @ self.w[b + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ self.w[b + "attn_k.weight"].T).reshape(T, KV, D)
            v = (h @ self.w[b + "attn_v.weight"].T).reshape(T, KV, D)
            q = self._rope(q, pos)
            k = self._rope(k, pos)
            att = np.empty((T, H, D))
            for hh in range(H):
                kv = hh // group
                s = (q[:, hh, :] @ k[:, kv, :].T) / np.sqrt(D) + mask  # [T, T]
                s = s - s.max(axis=-1, keepdims=True)
                p = np.exp(s)
                p /= p.sum(axis=-1, keepdims=True)
                att[:, hh, :] = p @ v[:, kv, :]
            x = x + att.reshape(T, H * D) @ self.w[b + "attn_output.weight"].T
            h = self._rmsnorm(x, self.w[b + "ffn_norm.weight"])
            g = h @ self.w[b + "ffn_gate.weight"].T
            u = h @ self.w[b + "ffn_up.weight"].T
            act = g / (1.0 + np.exp(-g)) * u
            x = x + act @ self.w[b + "ffn_down.weight"].T
        h = self._rmsnorm(x, self.w["output_norm.weight"])
        return h @ self.out_w.T


_MODEL: ExactModel | None = None


def forward(tokens, path: str | None = None) -> np.ndarray:
    """Module-level convenience: logits [T, V] float64 (model loaded once)."""
    global _MODEL
    if _MODEL is None or (path is not None and _MODEL.path != path):
        _MODEL = ExactModel(path)
    return _MODEL.forward(tokens)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, float64 over the full vocabulary."""
    lp = log_softmax(p_logits)
    lq = log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def top2_margin(z: np.ndarray) -> np.ndarray:
    s = np.sort(np.asarray(z, dtype=np.float64), axis=-1)
    return s[..., -1] - s[..., -2]


def _validate(path: str) -> int:
    import llama_cpp

    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                             "wikitext-2-raw-test.txt"), encoding="utf-8").read()[:4000]
    llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=512, n_threads=2, seed=1234,
                          verbose=False)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:64]
    llm.reset()
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
    ex = ExactModel(path).forward(ids)
    agree = int((ref.argmax(-1) == ex.argmax(-1)).sum())
    d = np.abs(ref - ex)
    k = kl(ex, ref)
    print(f"positions: {len(ids)}; top-1 agreement llama.cpp vs exact: {agree}/{len(ids)}")
    print(f"max |llama.cpp - exact| = {d.max():.4f}; mean = {d.mean():.5f}")
    print(f"KL(exact || llama.cpp): mean {k.mean():.3e} max {k.max():.3e}")
    return 0 if agree >= 0.9 * len(ids) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--validate", action="store_true", help="compare with llama-cpp-python")
    args = ap.parse_args()
    if args.validate:
        return _validate(args.model)
    m = ExactModel(args.model)
    print(f"layers={m.n_layer} C={m.n_embd} H={m.n_head} KV={m.n_head_kv} D={m.head_dim} "
          f"ff={m.n_ff} V={m.n_vocab} eps={m.eps} base={m.freq_base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
