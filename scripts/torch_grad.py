#!/usr/bin/env python3
"""PyTorch twin of edgelm-train's model: loss and gradients of one batch, as a fixture.

The model is built in PyTorch from the same f32 weights edgelm trains (GGUF tensor names and
row-major shapes, RoPE pairs as llama.cpp's NORM mode, query head h reading kv head
h // (H / KV), SwiGLU, tied output when there is no output.weight) and run in float64, so the
reference is exact up to the f32 weights themselves. The gradients of a float32 run are
compared with the float64 ones too, and that deviation (PyTorch's own f32 rounding) is stored
beside them so a test can put edgelm's deviation next to it.

Usage:
  torch_grad.py random --out FIXTURE.safetensors [--seed S] [--arch llama|qwen2|qwen3]
      A small random model (2 layers, width 32, 4 heads / 2 kv heads; 1 layer for qwen2/3),
      a fixed batch with two ignored targets, and reference AdamW steps and gradient clipping
      on a small tensor.
  torch_grad.py weights --weights W.safetensors --out GRADS.safetensors
      Weights and batch exported by edgelm (config in the metadata, `tokens`/`targets` I64
      tensors); writes the float64 loss and gradients.
  torch_grad.py bench --config CONFIG.json [--batch B --seq-len T --steps N --threads K]
      Times float32 training steps (forward, backward, AdamW) of the same architecture with
      random weights, PyTorch's fused causal attention (scaled_dot_product_attention);
      prints `median_step_ms X` (the comparison in bench/train_compare.py).

Output tensors: `weights.<name>` (random mode only), `grads.<name>` (f32 of the float64
gradients), `tokens`, `targets` (I64, -1 = ignored); metadata `edgelm.config` (JSON),
`loss` (float64 repr), `batch` (B), `torch_f32_rel_dev` (JSON: per tensor
max|g32 - g64| / max|g64|), `torch_version`.
"""
import argparse
import json
import math

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open


def param_names(cfg):
    names = [("token_embd.weight", (cfg["n_vocab"], cfg["n_embd"]))]
    c, ff = cfg["n_embd"], cfg["n_ff"]
    d = cfg.get("head_dim") or c // cfg["n_head"]
    qd, kvd = cfg["n_head"] * d, cfg["n_head_kv"] * d
    for i in range(cfg["n_layer"]):
        p = f"blk.{i}."
        names += [
            (p + "attn_norm.weight", (c,)),
            (p + "attn_q.weight", (qd, c)),
            (p + "attn_k.weight", (kvd, c)),
            (p + "attn_v.weight", (kvd, c)),
        ]
        if cfg["arch"] == "qwen2":
            names += [(p + "attn_q.bias", (qd,)), (p + "attn_k.bias", (kvd,)),
                      (p + "attn_v.bias", (kvd,))]
        if cfg["arch"] == "qwen3":
            names += [(p + "attn_q_norm.weight", (d,)), (p + "attn_k_norm.weight", (d,))]
        names += [
            (p + "attn_output.weight", (c, qd)),
            (p + "ffn_norm.weight", (c,)),
            (p + "ffn_gate.weight", (ff, c)),
            (p + "ffn_up.weight", (ff, c)),
            (p + "ffn_down.weight", (c, ff)),
        ]
    names.append(("output_norm.weight", (c,)))
    if not cfg["tied_output"]:
        names.append(("output.weight", (cfg["n_vocab"], c)))
    return names


def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta, mode):
    """x: [B, T, NH, D]; every sequence at positions 0..T; all D dimensions rotated."""
    _, t, _, d = x.shape
    i = torch.arange(d // 2, dtype=torch.float64)
    inv = theta ** (-2.0 * i / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]  # [T, D/2]
    cos = torch.cos(ang).to(x.dtype)[None, :, None, :]
    sin = torch.sin(ang).to(x.dtype)[None, :, None, :]
    if mode == "norm":  # adjacent pairs (2i, 2i+1): llama.cpp GGML_ROPE_TYPE_NORMAL
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y0, y1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return torch.stack([y0, y1], dim=-1).flatten(-2)
    x0, x1 = x[..., : d // 2], x[..., d // 2 :]  # neox halves
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)


def loss_fn(cfg, w, tokens, targets):
    b, t = tokens.shape
    c, h, kv = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"]
    d = cfg.get("head_dim") or c // h
    eps = cfg["rms_eps"]
    theta = cfg.get("rope_theta") or 10000.0
    mode = "norm" if cfg["arch"] == "llama" else "neox"
    x = w["token_embd.weight"][tokens]  # [B, T, C]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(cfg["n_layer"]):
        p = f"blk.{i}."
        n1 = rmsnorm(x, w[p + "attn_norm.weight"], eps)
        q = n1 @ w[p + "attn_q.weight"].T
        k = n1 @ w[p + "attn_k.weight"].T
        v = n1 @ w[p + "attn_v.weight"].T
        if cfg["arch"] == "qwen2":
            q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
        q, k, v = q.view(b, t, h, d), k.view(b, t, kv, d), v.view(b, t, kv, d)
        if cfg["arch"] == "qwen3":  # RMSNorm of each head, one weight shared by the heads
            q = rmsnorm(q, w[p + "attn_q_norm.weight"], eps)
            k = rmsnorm(k, w[p + "attn_k_norm.weight"], eps)
        q, k = rope(q, theta, mode), rope(k, theta, mode)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, NH, T, D]
        k = k.repeat_interleave(h // kv, dim=1)
        v = v.repeat_interleave(h // kv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(~mask, float("-inf"))
        y = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, t, h * d)
        x = x + y @ w[p + "attn_output.weight"].T
        n2 = rmsnorm(x, w[p + "ffn_norm.weight"], eps)
        g = n2 @ w[p + "ffn_gate.weight"].T
        u = n2 @ w[p + "ffn_up.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "ffn_down.weight"].T
    xf = rmsnorm(x, w["output_norm.weight"], eps)
    out = w["token_embd.weight"] if cfg["tied_output"] else w["output.weight"]
    logits = xf @ out.T
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, cfg["n_vocab"]), targets.reshape(-1), ignore_index=-1
    )


def bench(a):
    import time

    torch.set_num_threads(a.threads)
    cfg = json.load(open(a.config))
    c, h, kv = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"]
    d = cfg.get("head_dim") or c // h
    w = {}
    for name, shape in param_names(cfg):
        t = torch.ones(shape) if len(shape) == 1 else 0.02 * torch.randn(shape)
        w[name] = t.requires_grad_(True)
    opt = torch.optim.AdamW(list(w.values()), lr=1e-5, weight_decay=0.1)
    b, t = a.batch, a.seq_len
    tokens = torch.randint(0, cfg["n_vocab"], (b, t))
    targets = torch.randint(0, cfg["n_vocab"], (b, t))
    eps = cfg["rms_eps"]
    theta = cfg.get("rope_theta") or 10000.0
    mode = "norm" if cfg["arch"] == "llama" else "neox"

    def step_loss():
        x = w["token_embd.weight"][tokens]
        for i in range(cfg["n_layer"]):
            p = f"blk.{i}."
            n1 = rmsnorm(x, w[p + "attn_norm.weight"], eps)
            q = rope((n1 @ w[p + "attn_q.weight"].T).view(b, t, h, d), theta, mode)
            k = rope((n1 @ w[p + "attn_k.weight"].T).view(b, t, kv, d), theta, mode)
            v = (n1 @ w[p + "attn_v.weight"].T).view(b, t, kv, d)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            k = k.repeat_interleave(h // kv, dim=1)
            v = v.repeat_interleave(h // kv, dim=1)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + y.transpose(1, 2).reshape(b, t, h * d) @ w[p + "attn_output.weight"].T
            n2 = rmsnorm(x, w[p + "ffn_norm.weight"], eps)
            g = torch.nn.functional.silu(n2 @ w[p + "ffn_gate.weight"].T)
            x = x + (g * (n2 @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        xf = rmsnorm(x, w["output_norm.weight"], eps)
        out = w["token_embd.weight"] if cfg["tied_output"] else w["output.weight"]
        return torch.nn.functional.cross_entropy((xf @ out.T).reshape(-1, cfg["n_vocab"]),
                                                 targets.reshape(-1))

    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = step_loss()
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
        print(f"step {i}: loss {loss.item():.4f} {times[-1]:.0f} ms", flush=True)
    times.sort()
    print(f"median_step_ms {times[len(times) // 2]:.1f}")


def grads(cfg, weights32, tokens, targets, dtype):
    w = {k: v.to(dtype).detach().requires_grad_(True) for k, v in weights32.items()}
    loss = loss_fn(cfg, w, tokens, targets)
    loss.backward()
    return loss.item(), {k: v.grad for k, v in w.items()}


def reference(cfg, weights32, tokens, targets):
    loss64, g64 = grads(cfg, weights32, tokens, targets, torch.float64)
    _, g32 = grads(cfg, weights32, tokens, targets, torch.float32)
    dev = {}
    for k in g64:
        scale = g64[k].abs().max().item()
        dev[k] = (g32[k].double() - g64[k]).abs().max().item() / max(scale, 1e-30)
    out = {f"grads.{k}": v.float().contiguous() for k, v in g64.items()}
    meta = {
        "loss": repr(loss64),
        "torch_f32_rel_dev": json.dumps(dev),
        "torch_version": torch.__version__,
    }
    return out, meta


def adamw_reference(gen):
    """Three torch.optim.AdamW steps (lr per step, weight decay 0.1) on a 7-element tensor."""
    p0 = torch.randn(7, generator=gen)
    gs = torch.randn(3, 7, generator=gen)
    gs[1, 2] = 0.0  # a zero gradient still decays and moves by momentum
    lrs = torch.tensor([1e-2, 3e-3, 5e-2])
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    after = []
    for i in range(3):
        for group in opt.param_groups:
            group["lr"] = lrs[i].item()
        p.grad = gs[i].clone()
        opt.step()
        after.append(p.detach().clone())
    g = torch.randn(7, generator=gen) * 3.0
    clipped = g.clone().requires_grad_(True)
    clipped.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_([clipped], max_norm=0.5)
    return {
        "adamw.p0": p0,
        "adamw.grads": gs,
        "adamw.lrs": lrs,
        "adamw.after": torch.stack(after),
        "clip.grad": g,
        "clip.after": clipped.grad.detach().clone(),
        "clip.norm": norm.reshape(1).float(),
    }


RANDOM_CONFIG = {
    "arch": "llama",
    "n_layer": 2,
    "n_embd": 32,
    "n_head": 4,
    "n_head_kv": 2,
    "n_ff": 64,
    "n_vocab": 64,
    "n_ctx_train": 64,
    "rms_eps": 1e-5,
    "rope_theta": 10000.0,
    "tied_output": True,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("random")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--arch", default="llama", choices=["llama", "qwen2", "qwen3"])
    wp = sub.add_parser("weights")
    wp.add_argument("--weights", required=True)
    wp.add_argument("--out", required=True)
    wp.add_argument("--threads", type=int, default=0)
    bp = sub.add_parser("bench")
    bp.add_argument("--config", required=True)
    bp.add_argument("--batch", type=int, default=2)
    bp.add_argument("--seq-len", type=int, default=64)
    bp.add_argument("--steps", type=int, default=5)
    bp.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.mode == "bench":
        return bench(a)

    if a.mode == "random":
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(a.seed)
        cfg = dict(RANDOM_CONFIG)
        if a.arch != "llama":
            cfg.update(arch=a.arch, n_layer=1)
        weights = {}
        for name, shape in param_names(cfg):
            if name.endswith(".bias"):
                weights[name] = 0.3 * torch.randn(shape, generator=gen)
            elif len(shape) == 1:
                weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                weights[name] = 0.3 * torch.randn(shape, generator=gen)
        b, t = 2, 8
        tokens = torch.randint(0, cfg["n_vocab"], (b, t), generator=gen)
        targets = torch.randint(0, cfg["n_vocab"], (b, t), generator=gen)
        targets[0, 3] = -1
        targets[1, 0] = -1
        out, meta = reference(cfg, weights, tokens, targets)
        out.update({f"weights.{k}": v.float().contiguous() for k, v in weights.items()})
        out.update(adamw_reference(gen))
    else:
        if a.threads:
            torch.set_num_threads(a.threads)
        with safe_open(a.weights, "pt") as f:
            cfg = json.loads(f.metadata()["edgelm.config"])
        tensors = load_file(a.weights)
        tokens, targets = tensors.pop("tokens"), tensors.pop("targets")
        weights = {k: v for k, v in tensors.items()}
        out, meta = reference(cfg, weights, tokens, targets)
    out["tokens"] = tokens.to(torch.int64).contiguous()
    out["targets"] = targets.to(torch.int64).contiguous()
    meta["edgelm.config"] = json.dumps(cfg)
    meta["batch"] = str(tokens.shape[0])
    save_file(out, a.out, metadata=meta)
    print(f"loss {meta['loss']}; wrote {a.out}")


if __name__ == "__main__":
    main()
