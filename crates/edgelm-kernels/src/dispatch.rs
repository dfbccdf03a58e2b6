//! The kernel table: one row per type (dequantize, vec_dot, its activation type, activation
//! quantizer), chosen once at start-up — ggml's `type_traits_cpu[]`.

use std::sync::OnceLock;

use crate::quant;
use crate::{row_bytes, GgmlType, KernelError};

/// Dequantizes whole blocks: `src` holds `dst.len() / block_size` blocks.
pub(crate) type DequantizeFn = fn(&[u8], &mut [f32]);
/// Dot product of one weight row of `n` elements with one activation row of `n` elements in
/// the row's `vec_dot_type`. Lengths are validated by the caller.
pub(crate) type VecDotFn = fn(usize, &[u8], &[u8]) -> f32;
/// One weight row against four activation rows; each result bit-identical to [`VecDotFn`]'s.
pub(crate) type VecDot4Fn = fn(usize, &[u8], [&[u8]; 4]) -> [f32; 4];
/// Two weight rows against four activation rows; each result bit-identical to [`VecDotFn`]'s.
pub(crate) type VecDot2x4Fn = fn(usize, [&[u8]; 2], [&[u8]; 4]) -> [[f32; 4]; 2];
/// Four weight rows against four activation rows; each result bit-identical to [`VecDotFn`]'s.
pub(crate) type VecDot4x4Fn = fn(usize, [&[u8]; 4], [&[u8]; 4]) -> [[f32; 4]; 4];
/// [`VecDotFn`] with the activation's per-block scale fields given as f32 (`d` of each Q8_0
/// block; `d` then `s` of each Q8_1 block), converted once for every weight row; bit-identical to
/// [`VecDotFn`]'s result.
pub(crate) type VecDotPreFn = fn(usize, &[u8], &[u8], &[f32]) -> f32;
/// [`VecDotPreFn`] over `out.len()` consecutive weight rows (`w`), one result per row; each
/// bit-identical to [`VecDotPreFn`]'s.
pub(crate) type VecDotPreRowsFn = fn(usize, &[u8], &[u8], &[f32], &mut [f32]);
/// Rewrites a row of weight blocks (`src`) as Q8_0 blocks (`dst`, as many), exactly.
pub(crate) type ToQ8_0Fn = fn(&[u8], &mut [u8]);
/// Quantizes `x` into `dst` (exactly `row_bytes(ty, x.len())` bytes).
pub(crate) type QuantizeFn = fn(&[f32], &mut [u8]);
/// Rewrites four weight rows into a tile's own layout ([`PackedTile::block_bytes`] per block).
pub(crate) type PackRows4Fn = fn([&[u8]; 4], &mut [u8]);
/// Four packed weight rows against four activation rows; each result bit-identical to
/// [`VecDotFn`]'s on the unpacked row.
pub(crate) type PackedDot4x4Fn = fn(&[u8], [&[u8]; 4]) -> [[f32; 4]; 4];

/// A 4 × 4 tile over weight rows rewritten ("packed") once per group of four rows and block of
/// tokens (`crate::packed`), for prompt batches (K-quants: sub-blocks as bytes, scales as vectors).
#[derive(Clone, Copy)]
pub(crate) struct PackedTile {
    /// Weight type.
    pub(crate) ty: GgmlType,
    /// Packed bytes per weight block of four rows.
    pub(crate) block_bytes: usize,
    /// The rewrite of four rows.
    pub(crate) pack: PackRows4Fn,
    /// The tile.
    pub(crate) dot: PackedDot4x4Fn,
}

/// One row of the table.
#[derive(Clone, Copy)]
pub(crate) struct KernelRow {
    pub(crate) ty: GgmlType,
    pub(crate) vec_dot_type: GgmlType,
    pub(crate) dequantize: DequantizeFn,
    /// `None` for activation-only types (Q8_1, Q8_K), which ggml does not multiply as weights.
    pub(crate) vec_dot: Option<VecDotFn>,
    /// A faster four-activation-row form of `vec_dot`, where a SIMD table has one.
    pub(crate) vec_dot4: Option<VecDot4Fn>,
    /// A two-weight-row, four-activation-row form, where a SIMD table has one.
    pub(crate) vec_dot2x4: Option<VecDot2x4Fn>,
    /// A four-weight-row, four-activation-row form, where a SIMD table has one.
    pub(crate) vec_dot4x4: Option<VecDot4x4Fn>,
    /// `vec_dot` with the activation's block scales already in f32 (decode), where a SIMD table
    /// has one.
    pub(crate) vec_dot_pre: Option<VecDotPreFn>,
    /// `vec_dot_pre` over a run of rows in one call (decode), where a SIMD table has one.
    pub(crate) vec_dot_pre_rows: Option<VecDotPreRowsFn>,
    /// For weights whose values are Q8_0 blocks in another packing (Q5_0): the exact rewrite,
    /// so that prompt batches run Q8_0's 4 × 4 tile on rows rewritten once per task.
    pub(crate) to_q8_0: Option<ToQ8_0Fn>,
    /// The type's `from_float`; `None` for weight-only types.
    pub(crate) quantize: Option<QuantizeFn>,
}

/// One-query flash attention over an F16 cache (see [`crate::ops::attention_one_query_f16`]).
pub(crate) type AttnFn =
    fn(&mut [f32], &mut [half::f16], &[half::f16], &[half::f16], &[half::f16], usize, f32);
/// Tiled flash attention (see [`crate::tiled::attention_tiled_f16`]).
pub(crate) type TiledFn = fn(
    &mut [f32],
    &[f32],
    &[half::f16],
    &[half::f16],
    usize,
    usize,
    f32,
    &mut crate::tiled::TiledScratch,
);
/// SwiGLU over a row (see [`crate::ops::swiglu_forward`]).
pub(crate) type SwigluFn = fn(&mut [f32], &[f32], &[f32]);
/// RoPE of one head (see [`crate::ops::rope_forward`]).
pub(crate) type RopeFn = fn(&mut [f32], &[f32], crate::ops::RopeMode);
/// Attention over a Q8_0 cache (see [`crate::attn_q8::attention_one_query_q8_0`]).
pub(crate) type AttnQ8Fn =
    fn(&Kernels, &mut [f32], &mut [f32], &[u8], &[u8], &[u8], usize, usize, f32);
/// f32 row to F16 (round to nearest even).
pub(crate) type ToF16Fn = fn(&mut [half::f16], &[f32]);

/// A complete kernel table: the scalar reference or the best one for this CPU.
pub struct Kernels {
    pub(crate) name: &'static str,
    pub(crate) rows: Vec<KernelRow>,
    pub(crate) attn: AttnFn,
    pub(crate) to_f16: ToF16Fn,
    pub(crate) tiled: TiledFn,
    pub(crate) swiglu: SwigluFn,
    pub(crate) rope: RopeFn,
    pub(crate) attn_q8: AttnQ8Fn,
    /// Packed 4 × 4 prompt tiles, by weight type (none in the scalar table).
    pub(crate) packed: Vec<PackedTile>,
}

/// Every type with kernels, in the table's order.
pub const SUPPORTED_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn scalar_rows() -> Vec<KernelRow> {
    use quant::*;
    use GgmlType as T;
    vec![
        KernelRow {
            ty: T::F32,
            vec_dot_type: T::F32,
            dequantize: f32::dequantize_row,
            vec_dot: Some(|_, w, a| f32::vec_dot(w, a)),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: Some(f32::quantize_row),
        },
        KernelRow {
            ty: T::F16,
            vec_dot_type: T::F16,
            dequantize: f16::dequantize_row,
            vec_dot: Some(|_, w, a| f16::vec_dot(w, a)),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: Some(f16::quantize_row),
        },
        KernelRow {
            ty: T::BF16,
            vec_dot_type: T::BF16,
            dequantize: bf16::dequantize_row,
            vec_dot: Some(|_, w, a| bf16::vec_dot(w, a)),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: Some(bf16::quantize_row),
        },
        KernelRow {
            ty: T::Q4_0,
            vec_dot_type: T::Q8_0,
            dequantize: |s, d| q4_0::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q4_0::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q4_1,
            vec_dot_type: T::Q8_1,
            dequantize: |s, d| q4_1::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q4_1::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q5_0,
            vec_dot_type: T::Q8_0,
            dequantize: |s, d| q5_0::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q5_0::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: Some(|s, d| q5_0::to_q8_0(blocks(s), blocks_mut(d))),
            quantize: None,
        },
        KernelRow {
            ty: T::Q5_1,
            vec_dot_type: T::Q8_1,
            dequantize: |s, d| q5_1::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q5_1::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q8_0,
            vec_dot_type: T::Q8_0,
            dequantize: |s, d| q8_0::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q8_0::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: Some(|x, d| q8_0::quantize_row(x, blocks_mut(d))),
        },
        KernelRow {
            ty: T::Q8_1,
            vec_dot_type: T::Q8_1,
            dequantize: |s, d| q8_1::dequantize_row(blocks(s), d),
            vec_dot: None,
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: Some(|x, d| q8_1::quantize_row(x, blocks_mut(d))),
        },
        KernelRow {
            ty: T::Q2_K,
            vec_dot_type: T::Q8_K,
            dequantize: |s, d| q2_k::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q2_k::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q3_K,
            vec_dot_type: T::Q8_K,
            dequantize: |s, d| q3_k::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q3_k::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q4_K,
            vec_dot_type: T::Q8_K,
            dequantize: |s, d| q4_k::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q4_k::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q5_K,
            vec_dot_type: T::Q8_K,
            dequantize: |s, d| q5_k::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q5_k::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q6_K,
            vec_dot_type: T::Q8_K,
            dequantize: |s, d| q6_k::dequantize_row(blocks(s), d),
            vec_dot: Some(|_, w, a| q6_k::vec_dot(blocks(w), blocks(a))),
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: None,
        },
        KernelRow {
            ty: T::Q8_K,
            vec_dot_type: T::Q8_K,
            dequantize: |s, d| q8_k::dequantize_row(blocks(s), d),
            vec_dot: None,
            vec_dot4: None,
            vec_dot2x4: None,
            vec_dot4x4: None,
            vec_dot_pre: None,
            vec_dot_pre_rows: None,
            to_q8_0: None,
            quantize: Some(|x, d| q8_k::quantize_row(x, blocks_mut(d))),
        },
    ]
}

impl Kernels {
    /// The scalar reference table (the definition every faster table is tested against).
    pub fn scalar() -> &'static Kernels {
        static SCALAR: OnceLock<Kernels> = OnceLock::new();
        SCALAR.get_or_init(|| Kernels {
            name: "scalar",
            rows: scalar_rows(),
            attn: crate::ops::attention_one_query_f16,
            to_f16: crate::ops::f32_to_f16_row,
            tiled: crate::tiled::attention_tiled_f16,
            swiglu: crate::ops::swiglu_forward,
            rope: crate::ops::rope_forward,
            attn_q8: crate::attn_q8::attention_one_query_q8_0,
            packed: Vec::new(),
        })
    }

    /// The fastest table this CPU supports (detected at run time).
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<Kernels> = OnceLock::new();
        BEST.get_or_init(|| {
            #[allow(unused_mut)]
            let mut k = Kernels {
                name: "scalar",
                rows: scalar_rows(),
                attn: crate::ops::attention_one_query_f16,
                to_f16: crate::ops::f32_to_f16_row,
                tiled: crate::tiled::attention_tiled_f16,
                swiglu: crate::ops::swiglu_forward,
                rope: crate::ops::rope_forward,
                attn_q8: crate::attn_q8::attention_one_query_q8_0,
                packed: Vec::new(),
            };
            #[cfg(target_arch = "x86_64")]
            crate::arch::x86_64::install(&mut k);
            #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
            crate::arch::aarch64::install(&mut k);
            k
        })
    }

    /// A short name of the table ("scalar", "avx2+fma+f16c", "neon+dotprod", ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Attention of one query head over `n_kv` cached positions, as
    /// [`crate::ops::attention_one_query_f16`] (the scalar reference) computes it, bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_one_query_f16(
        &self,
        out: &mut [f32],
        acc: &mut [half::f16],
        q: &[half::f16],
        k: &[half::f16],
        v: &[half::f16],
        n_kv: usize,
        scale: f32,
    ) {
        (self.attn)(out, acc, q, k, v, n_kv, scale)
    }

    /// llama.cpp's tiled flash attention for a block of query rows of one head, bit-identical to
    /// the reference [`crate::tiled::attention_tiled_f16`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_tiled_f16(
        &self,
        out: &mut [f32],
        q: &[f32],
        k: &[half::f16],
        v: &[half::f16],
        first_visible: usize,
        d: usize,
        scale: f32,
        scratch: &mut crate::tiled::TiledScratch,
    ) {
        (self.tiled)(out, q, k, v, first_visible, d, scale, scratch)
    }

    /// Attention of one query head over a Q8_0 KV cache, as llama.cpp computes it with a
    /// quantized cache (see [`crate::attn_q8::attention_one_query_q8_0`]); `q` is the query
    /// quantized to Q8_0.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_one_query_q8_0(
        &self,
        out: &mut [f32],
        acc: &mut [f32],
        q: &[u8],
        k: &[u8],
        v: &[u8],
        n_kv: usize,
        d: usize,
        scale: f32,
    ) {
        (self.attn_q8)(self, out, acc, q, k, v, n_kv, d, scale)
    }

    /// SwiGLU over a row, bit-identical to [`crate::ops::swiglu_forward`].
    pub fn swiglu(&self, y: &mut [f32], gate: &[f32], up: &[f32]) {
        (self.swiglu)(y, gate, up)
    }

    /// RoPE of one head in place, bit-identical to [`crate::ops::rope_forward`].
    pub fn rope(&self, x: &mut [f32], cache: &[f32], mode: crate::ops::RopeMode) {
        (self.rope)(x, cache, mode)
    }

    /// Converts an f32 row to F16 (round to nearest even).
    pub fn f32_to_f16_row(&self, dst: &mut [half::f16], src: &[f32]) {
        (self.to_f16)(dst, src)
    }

    /// The packed 4 × 4 prompt tile for weights of `ty`, where this table has one.
    pub(crate) fn packed_tile(&self, ty: GgmlType) -> Option<PackedTile> {
        self.packed.iter().find(|p| p.ty == ty).copied()
    }

    pub(crate) fn row(&self, ty: GgmlType, op: &'static str) -> Result<&KernelRow, KernelError> {
        self.rows
            .iter()
            .find(|r| r.ty == ty)
            .ok_or(KernelError::Unsupported { ty, op })
    }

    /// The activation type `ty`'s weights are multiplied with (ggml's `vec_dot_type`).
    pub fn vec_dot_type(&self, ty: GgmlType) -> Result<GgmlType, KernelError> {
        let row = self.row(ty, "vec_dot")?;
        if row.vec_dot.is_none() {
            return Err(KernelError::Unsupported { ty, op: "vec_dot" });
        }
        Ok(row.vec_dot_type)
    }

    /// Dequantizes `dst.len()` elements of type `ty` from `src`.
    pub fn dequantize_row(
        &self,
        ty: GgmlType,
        src: &[u8],
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        let row = self.row(ty, "dequantize")?;
        check_len(
            ty,
            "dequantize source",
            row_bytes(ty, dst.len())?,
            src.len(),
        )?;
        (row.dequantize)(src, dst);
        Ok(())
    }

    /// Quantizes `x` to the activation type `act_ty` into `dst`
    /// (`dst.len() == row_bytes(act_ty, x.len())`).
    pub fn quantize_activation(
        &self,
        act_ty: GgmlType,
        x: &[f32],
        dst: &mut [u8],
    ) -> Result<(), KernelError> {
        let row = self.row(act_ty, "quantize_activation")?;
        let quantize = row.quantize.ok_or(KernelError::Unsupported {
            ty: act_ty,
            op: "quantize_activation",
        })?;
        check_len(
            act_ty,
            "quantized activation",
            row_bytes(act_ty, x.len())?,
            dst.len(),
        )?;
        quantize(x, dst);
        Ok(())
    }

    /// Dot product of one weight row (`n` elements of `ty`) with one activation row quantized
    /// to `vec_dot_type(ty)`.
    pub fn vec_dot(
        &self,
        ty: GgmlType,
        n: usize,
        w: &[u8],
        act: &[u8],
    ) -> Result<f32, KernelError> {
        let (f, act_ty) = self.vec_dot_fn(ty)?;
        check_len(ty, "vec_dot weights", row_bytes(ty, n)?, w.len())?;
        check_len(
            act_ty,
            "vec_dot activation",
            row_bytes(act_ty, n)?,
            act.len(),
        )?;
        Ok(f(n, w, act))
    }

    pub(crate) fn vec_dot_fn(&self, ty: GgmlType) -> Result<(VecDotFn, GgmlType), KernelError> {
        let row = self.row(ty, "vec_dot")?;
        let f = row
            .vec_dot
            .ok_or(KernelError::Unsupported { ty, op: "vec_dot" })?;
        Ok((f, row.vec_dot_type))
    }
}

pub(crate) fn check_len(
    ty: GgmlType,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected != got {
        return Err(KernelError::BadLength {
            ty,
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// The process-wide kernel table, chosen on first use: [`Kernels::best`], or
/// [`Kernels::scalar`] when the environment variable `EDGELM_KERNELS` is `scalar`.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<&'static Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| match std::env::var("EDGELM_KERNELS") {
        Ok(v) if v.eq_ignore_ascii_case("scalar") => Kernels::scalar(),
        _ => Kernels::best(),
    })
}
