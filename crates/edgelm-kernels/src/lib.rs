//! edgelm-kernels: the math on tensors, and nothing about files or models.
//!
//! Owns the ggml block formats (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K..Q6_K,
//! Q8_K — one file each under [`quant`]), their scalar reference dequantization and dot
//! products, activation quantization as llama.cpp performs it on x86, the kernel table chosen
//! once at start-up ([`kernels`]; `EDGELM_KERNELS=scalar` forces the reference), the thread
//! pool and the matrix product ([`matmul`]). It must not know about GGUF files (only the type
//! table, re-exported from `edgelm-gguf`) or about model architectures.
//!
//! Numerics follow llama.cpp's CPU backend: dequantization is bit-exact with ggml's
//! `dequantize_row_*`; the scalar dots use the integer sums and scale combinations of ggml's
//! `ggml_vec_dot_*_generic`; activations are quantized with ggml's x86 arithmetic.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub use edgelm_gguf::GgmlType;

mod arch;
pub mod attn_q8;
mod convert;
pub mod dense;
mod dispatch;
mod error;
mod matmul;
pub mod membw;
pub mod ops;
mod packed;
pub mod quant;
mod spin;
#[cfg(test)]
mod testutil;
mod threads;
pub mod tiled;

pub use convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use dispatch::{kernels, Kernels, SUPPORTED_TYPES};
pub use error::KernelError;
pub use matmul::{matmul, matmul_many, quantize_activations, MatmulJob, MAX_MATMUL_JOBS};
pub use threads::ThreadPool;

/// Bytes taken by `n` elements of `ty`; an error when `n` is not a whole number of blocks or
/// the size overflows.
pub fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, KernelError> {
    let block_size = ty.block_size();
    if !n.is_multiple_of(block_size) {
        return Err(KernelError::NotBlockMultiple { ty, n, block_size });
    }
    (n / block_size)
        .checked_mul(ty.type_size())
        .ok_or(KernelError::Overflow { what: "row bytes" })
}

/// Dequantizes `dst.len()` elements of type `ty` from `src` (which must hold exactly
/// `row_bytes(ty, dst.len())` bytes). Bit-exact with ggml's `dequantize_row_*`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    kernels().dequantize_row(ty, src, dst)
}

/// The activation type weights of `ty` are multiplied with (ggml's `vec_dot_type`):
/// Q4_0/Q5_0/Q8_0 → Q8_0, Q4_1/Q5_1 → Q8_1, K-quants → Q8_K, F16/BF16/F32 → themselves.
pub fn vec_dot_type(ty: GgmlType) -> Result<GgmlType, KernelError> {
    kernels().vec_dot_type(ty)
}

/// Quantizes one activation row `x` to `act_ty` (Q8_0, Q8_1, Q8_K, F16, BF16 or F32) into
/// `dst`, which must be exactly `row_bytes(act_ty, x.len())` bytes.
pub fn quantize_activation(act_ty: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    kernels().quantize_activation(act_ty, x, dst)
}

/// Dot product of one weight row (`n` elements of `ty`) with one activation row quantized to
/// [`vec_dot_type`]`(ty)`.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Result<f32, KernelError> {
    kernels().vec_dot(ty, n, w, act)
}

/// The exact path: dot product of the dequantized weight row with f32 `x`, products and sum in
/// f64, rounded to f32 once at the end. The reference the quantized dots are judged against.
pub fn vec_dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> Result<f32, KernelError> {
    let k = Kernels::scalar();
    dispatch::check_len(ty, "vec_dot_f32 weights", row_bytes(ty, x.len())?, w.len())?;
    // Dequantize 256 elements (a whole number of blocks of every supported type) at a time.
    const CHUNK: usize = 256;
    let mut buf = [0.0f32; CHUNK];
    let mut sum = 0.0f64;
    let mut offset = 0usize;
    for xs in x.chunks(CHUNK) {
        let bytes = row_bytes(ty, xs.len())?;
        let dst = &mut buf[..xs.len()];
        k.dequantize_row(ty, &w[offset..offset + bytes], dst)?;
        offset += bytes;
        for (a, b) in dst.iter().zip(xs) {
            sum += *a as f64 * *b as f64;
        }
    }
    Ok(sum as f32)
}
