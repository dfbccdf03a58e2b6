//! aarch64 kernels: NEON (baseline on every aarch64 CPU), with the `dotprod` extension's `SDOT`
//! for the 8-bit products where the CPU has it (detected at run time; `EDGELM_NO_DOTPROD=1`
//! turns it off to test or measure the plain NEON path on the same machine).
//!
//! The quantized dot products reproduce the x86-64 table's arithmetic (ggml's AVX2 kernels:
//! exact integer sums of 4 adjacent products in 8 lanes, one fused multiply-add per lane and
//! block, `hsum_float_8`), so the logits are the same bit for bit on both architectures; see
//! [`dots`]. The F16 attention helpers and the activation quantizers equal the scalar
//! reference bit for bit, as the x86-64 ones do. Tiled attention, SwiGLU and the Q8_0-cache
//! attention keep the reference bodies: on aarch64 those are already compiled with NEON and
//! FMA (the x86-64 table recompiles them with AVX2 + FMA only because x86-64's baseline lacks
//! both).

use crate::dispatch::Kernels;
use crate::quant::blocks;
use crate::GgmlType;

mod attn;
mod dots;
mod quantize;

/// Whether the CPU has `dotprod` and `EDGELM_NO_DOTPROD` is unset.
fn dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
        && std::env::var_os("EDGELM_NO_DOTPROD").is_none()
}

/// Replaces the kernels NEON speeds up and names the table.
pub(crate) fn install(k: &mut Kernels) {
    let sdot = dotprod();
    for row in k.rows.iter_mut() {
        if sdot {
            dots::sdot::fill(row);
        } else {
            dots::plain::fill(row);
        }
        match row.ty {
            GgmlType::Q8_0 => row.quantize = Some(quantize::quantize_q8_0),
            GgmlType::Q8_1 => row.quantize = Some(quantize::quantize_q8_1),
            GgmlType::Q8_K => row.quantize = Some(quantize::quantize_q8_k),
            _ => {}
        }
    }
    k.attn = attn::attention_one_query_f16;
    k.to_f16 = attn::f32_to_f16_entry;
    k.name = if sdot { "neon+dotprod" } else { "neon" };
}

/// Splits four activation rows into blocks, each as long as `n_blocks`.
fn blocks4<B: bytemuck::Pod>(a: [&[u8]; 4], n_blocks: usize) -> [&[B]; 4] {
    let ys = a.map(|r| blocks::<B>(r));
    for y in &ys {
        assert_eq!(y.len(), n_blocks, "vec_dot_x4: block counts differ");
    }
    ys
}

/// Splits `R` weight rows into blocks of equal count.
fn blocks_n<B: bytemuck::Pod, const R: usize>(w: [&[u8]; R]) -> [&[B]; R] {
    let xs = w.map(|r| blocks::<B>(r));
    for x in &xs {
        assert_eq!(x.len(), xs[0].len(), "vec_dot2x4: block counts differ");
    }
    xs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::lane_model::{self, inputs};
    use crate::dispatch::{KernelRow, VecDotFn};
    use crate::Kernels;

    /// The tables under test: plain NEON always, `dotprod` where this CPU has it.
    fn tables() -> Vec<(&'static str, KernelRow)> {
        let mut out = Vec::new();
        type Fill = fn(&mut KernelRow);
        let variants: [(&str, Fill, bool); 2] = [
            ("neon", dots::plain::fill, true),
            (
                "dotprod",
                dots::sdot::fill,
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ),
        ];
        for (name, fill, present) in variants {
            if !present {
                eprintln!("skipped {name}: CPU lacks it");
                continue;
            }
            for ty in [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q5_1,
                GgmlType::Q8_0,
                GgmlType::Q4_K,
                GgmlType::Q6_K,
            ] {
                let mut row = *Kernels::scalar()
                    .rows
                    .iter()
                    .find(|r| r.ty == ty)
                    .expect("row");
                let reference = row.vec_dot;
                fill(&mut row);
                assert!(
                    row.vec_dot.map(|f| f as usize) != reference.map(|f| f as usize),
                    "{name}: {ty} not filled"
                );
                out.push((name, row));
            }
        }
        out
    }

    /// The lane model of the AVX2 arithmetic for the types that have one, `None` for the
    /// types whose NEON kernel follows the scalar reference instead.
    fn model(ty: GgmlType) -> Option<VecDotFn> {
        match ty {
            GgmlType::Q8_0 => Some(|_, w, a| lane_model::q8_0(blocks(w), blocks(a))),
            GgmlType::Q5_0 => Some(|_, w, a| lane_model::q5_0(blocks(w), blocks(a))),
            GgmlType::Q4_1 => Some(|_, w, a| lane_model::q4_1(blocks(w), blocks(a))),
            GgmlType::Q4_K => Some(|_, w, a| lane_model::q4_k(blocks(w), blocks(a))),
            GgmlType::Q6_K => Some(|_, w, a| lane_model::q6_k(blocks(w), blocks(a))),
            _ => None,
        }
    }

    /// Every NEON dot product (both lane-sum variants) on random rows of 1 to 9 blocks with
    /// edge blocks (all-0x00 / all-0xFF quants, zero and large activations): bit for bit the
    /// AVX2 arithmetic's model for Q8_0, Q5_0, Q4_1, Q4_K, Q6_K (hence the x86-64 table's
    /// result) and the scalar reference for Q4_0, Q5_1; within the reference's rounding
    /// budget in all cases. The tile forms (1 × 4, 2 × 4, prepared scales) give each result
    /// exactly as the single-row kernel.
    #[test]
    fn neon_dots_match_model_and_reference() {
        let scalar = Kernels::scalar();
        let mut s = 77u64;
        for (name, row) in tables() {
            let ty = row.ty;
            let act_ty = row.vec_dot_type;
            let one = row.vec_dot.expect("vec_dot");
            for case in 0..40usize {
                let n = ty.block_size() * (1 + case % 9);
                let w0 = inputs::weights(ty, n, &mut s);
                let w1 = inputs::weights(ty, n, &mut s);
                let acts: Vec<Vec<u8>> = (0..4)
                    .map(|_| inputs::activations(act_ty, n, &mut s))
                    .collect();
                let a4 = [&acts[0][..], &acts[1][..], &acts[2][..], &acts[3][..]];
                let got = one(n, &w0, a4[0]);
                let want = scalar.vec_dot(ty, n, &w0, a4[0]).expect("dot");
                match model(ty) {
                    Some(m) => assert_eq!(
                        got.to_bits(),
                        m(n, &w0, a4[0]).to_bits(),
                        "{name} {ty} case {case}: model"
                    ),
                    None => assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{name} {ty} case {case}: reference"
                    ),
                }
                let mut wf = vec![0.0f32; n];
                let mut af = vec![0.0f32; n];
                scalar.dequantize_row(ty, &w0, &mut wf).expect("deq");
                scalar.dequantize_row(act_ty, a4[0], &mut af).expect("deq");
                let mag: f32 = wf.iter().zip(&af).map(|(p, q)| (p * q).abs()).sum();
                assert!(
                    (got - want).abs() <= 2e-3 * mag + 1e-30,
                    "{name} {ty} case {case}: {got} reference {want}"
                );
                if let Some(f4) = row.vec_dot4 {
                    let r = f4(n, &w0, a4);
                    for j in 0..4 {
                        let single = one(n, &w0, a4[j]);
                        assert_eq!(r[j].to_bits(), single.to_bits(), "{name} {ty} x4 {j}");
                    }
                }
                if let Some(f2) = row.vec_dot2x4 {
                    let r = f2(n, [&w0, &w1], a4);
                    for (i, w) in [&w0, &w1].into_iter().enumerate() {
                        for j in 0..4 {
                            let single = one(n, w, a4[j]);
                            assert_eq!(
                                r[i][j].to_bits(),
                                single.to_bits(),
                                "{name} {ty} 2x4 {i} {j}"
                            );
                        }
                    }
                }
                if let Some(fp) = row.vec_dot_pre {
                    let ad: Vec<f32> = a4[0]
                        .chunks_exact(act_ty.type_size())
                        .map(|b| crate::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                        .collect();
                    assert_eq!(
                        fp(n, &w0, a4[0], &ad).to_bits(),
                        got.to_bits(),
                        "{name} {ty} pre"
                    );
                }
            }
        }
    }

    /// Extreme blocks: -128 activations are never produced by the quantizer, but weights of
    /// -128 (Q8_0) and 0xFF bytes everywhere, with the largest f16 scales, stay exact.
    #[test]
    fn neon_dots_handle_extreme_blocks() {
        for (name, row) in tables() {
            let ty = row.ty;
            let act_ty = row.vec_dot_type;
            for fill_byte in [0x80u8, 0xFF, 0x7F] {
                let n = 2 * ty.block_size();
                let mut w = vec![fill_byte; crate::row_bytes(ty, n).expect("bytes")];
                let mut x = vec![0.0f32; n];
                for (i, v) in x.iter_mut().enumerate() {
                    *v = if i % 2 == 0 { 127.0 } else { -127.0 };
                }
                let mut a = vec![0u8; crate::row_bytes(act_ty, n).expect("bytes")];
                Kernels::scalar()
                    .quantize_activation(act_ty, &x, &mut a)
                    .expect("quantize");
                // A finite scale in every f16 field, so the result is finite.
                let ts = ty.type_size();
                let offsets: &[usize] = match ty {
                    GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K => &[0, 2],
                    GgmlType::Q6_K => &[ts - 2],
                    _ => &[0],
                };
                for b in w.chunks_exact_mut(ts) {
                    for &o in offsets {
                        b[o..o + 2].copy_from_slice(&crate::f32_to_f16(0.01).to_le_bytes());
                    }
                }
                let got = (row.vec_dot.expect("dot"))(n, &w, &a);
                let want = match model(ty) {
                    Some(m) => m(n, &w, &a),
                    None => Kernels::scalar().vec_dot(ty, n, &w, &a).expect("dot"),
                };
                assert_eq!(got.to_bits(), want.to_bits(), "{name} {ty} {fill_byte:#x}");
            }
        }
    }

    /// The installed table is complete and named for the CPU.
    #[test]
    fn install_names_the_table() {
        let best = Kernels::best();
        assert!(best.name().starts_with("neon"), "{}", best.name());
        let q8 = best.row(GgmlType::Q8_0, "test").expect("row");
        assert!(q8.vec_dot_pre.is_some() && q8.quantize.is_some());
    }
}
