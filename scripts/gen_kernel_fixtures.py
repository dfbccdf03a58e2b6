#!/usr/bin/env python3
"""Generate golden dequantization fixtures for crates/edgelm-kernels/tests/.

Run with the reference venv (see scripts/ref-venv.sh):
    ~/.cache/edgelm-ref/venv/bin/python scripts/gen_kernel_fixtures.py [MODEL.gguf]

For every block format it draws random blocks with a fixed seed (random bytes, but every f16
scale field replaced by a random *finite* f16) and dequantizes them with gguf-py's reference
(`gguf.quants.dequantize`). It also quantizes random floats to Q8_0 with gguf-py (which mirrors
ggml's quantize_row_q8_0_ref), and, when the model file is present, dumps a few real rows of
a Q4_1 and a Q8_0 tensor with their gguf-py dequantization.

File format (little-endian), tests/data/<kind>_<TYPE>.bin:
    b"EDGK", u32 version=1, u32 ggml type id, u32 n_elements, u32 n_bytes,
    then for "dequant"/"model": n_bytes raw block bytes, then n_elements f32;
    for "quantref": n_elements f32 inputs, then n_bytes block bytes.
"""
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "edgelm-kernels", "tests", "data")

# type -> (elements per block, bytes per block, byte offsets of f16 fields in a block)
FORMATS = {
    T.F16: (1, 2, [0]),
    T.BF16: (1, 2, []),
    T.Q4_0: (32, 18, [0]),
    T.Q4_1: (32, 20, [0, 2]),
    T.Q5_0: (32, 22, [0]),
    T.Q5_1: (32, 24, [0, 2]),
    T.Q8_0: (32, 34, [0]),
    T.Q2_K: (256, 84, [80, 82]),
    T.Q3_K: (256, 110, [108]),
    T.Q4_K: (256, 144, [0, 2]),
    T.Q5_K: (256, 176, [0, 2]),
    T.Q6_K: (256, 210, [208]),
}


def random_finite_f16(rng, n):
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    # exponent all ones = inf/NaN: redraw those as small normal values
    bad = (bits & 0x7C00) == 0x7C00
    bits[bad] &= 0x83FF  # exponent 0 -> subnormal/zero, keeps sign and mantissa
    return bits


def write(name, ty, n_elements, first, second):
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(b"EDGK")
        f.write(struct.pack("<IIII", 1, int(ty), n_elements, len(first) if name.startswith(("dequant", "model")) else len(second)))
        f.write(first)
        f.write(second)
    return os.path.getsize(path)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    total = 0
    for ty, (bs, ts, f16_offsets) in FORMATS.items():
        n_blocks = 24 if bs == 256 else (96 if bs == 32 else 1024)
        raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint16).astype(np.uint8)
        for off in f16_offsets:
            raw[:, off:off + 2] = random_finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        if ty == T.BF16:
            b = raw.reshape(-1).view(np.uint16).copy()
            nan = ((b & 0x7F80) == 0x7F80) & ((b & 0x7F) != 0)
            b[nan] &= 0xFF7F  # NaN -> finite: payloads are not part of the contract
            raw = b.view(np.uint8).reshape(n_blocks, ts)
        if bs == 32:
            # a few blocks with special scales: zero, negative zero, largest finite, subnormal
            for i, d in enumerate([0x0000, 0x8000, 0x7BFF, 0xFBFF, 0x0001]):
                raw[i, 0:2] = np.array([d], dtype=np.uint16).view(np.uint8)
        data = raw.reshape(-1)
        n_elements = n_blocks * bs
        values = dequantize(data, ty).astype(np.float32).reshape(-1)
        assert values.size == n_elements
        total += write(f"dequant_{ty.name}.bin", ty, n_elements, data.tobytes(), values.astype("<f4").tobytes())

    # Q8_0 reference quantization (gguf-py is bit-exact with quantize_row_q8_0_ref).
    x = (rng.standard_normal(32 * 64) * np.exp(rng.uniform(-8, 8, size=32 * 64))).astype(np.float32)
    x[:32] = 0.0
    x[32:64] = np.arange(-16, 16, dtype=np.float32) * 0.5  # exact halves: tie rounding
    q = quantize(x, T.Q8_0).reshape(-1)
    total += write("quantref_Q8_0.bin", T.Q8_0, x.size, x.astype("<f4").tobytes(), q.tobytes())

    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(model):
        reader = gguf.GGUFReader(model)
        wanted = {"blk.0.attn_q.weight": 3, "token_embd.weight": 2}
        for t in reader.tensors:
            if t.name in wanted:
                rows = wanted[t.name]
                data = np.asarray(t.data)[:rows].reshape(-1).view(np.uint8)
                values = dequantize(data, t.tensor_type).astype(np.float32).reshape(-1)
                total += write(f"model_{t.tensor_type.name}.bin", t.tensor_type, values.size,
                               data.tobytes(), values.astype("<f4").tobytes())
                print(f"model rows: {t.name} ({t.tensor_type.name}) x{rows}")
    else:
        print(f"model {model} absent: model-row fixtures not generated")
    print(f"wrote {total} bytes to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
