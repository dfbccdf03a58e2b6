//! Block-by-block comparison of two quantized models (ours against llama-quantize's), for the
//! bit-exactness tests and reports: which tensors differ in type, how many blocks differ, and
//! by how much their dequantized values differ.

use edgelm_gguf::{GgmlType, GgufFile};

/// How one tensor of `ours` compares with the same tensor of `reference`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDiff {
    /// Tensor name.
    pub name: String,
    /// Our type.
    pub ours: Option<GgmlType>,
    /// The reference's type.
    pub reference: GgmlType,
    /// Blocks in the tensor.
    pub n_blocks: usize,
    /// Blocks whose bytes differ.
    pub n_blocks_differ: usize,
    /// Largest |ours − reference| over the dequantized values of differing blocks.
    pub max_abs_diff: f32,
}

impl TensorDiff {
    /// Same type and every block identical.
    pub fn is_exact(&self) -> bool {
        self.ours == Some(self.reference) && self.n_blocks_differ == 0
    }
}

/// Compares every tensor of `reference` with the tensor of the same name in `ours`.
pub fn compare_files(ours: &GgufFile, reference: &GgufFile) -> Vec<TensorDiff> {
    let mut out = Vec::new();
    for rt in reference.tensors() {
        let Some(ot) = ours.tensor(&rt.name) else {
            out.push(TensorDiff {
                name: rt.name.clone(),
                ours: None,
                reference: rt.ty,
                n_blocks: 0,
                n_blocks_differ: 0,
                max_abs_diff: f32::INFINITY,
            });
            continue;
        };
        let block_bytes = rt.ty.type_size();
        let n_blocks = (rt.n_bytes as usize) / block_bytes;
        let mut diff = TensorDiff {
            name: rt.name.clone(),
            ours: Some(ot.ty),
            reference: rt.ty,
            n_blocks,
            n_blocks_differ: 0,
            max_abs_diff: 0.0,
        };
        if ot.ty != rt.ty || ot.dims != rt.dims {
            diff.n_blocks_differ = n_blocks;
            diff.max_abs_diff = f32::INFINITY;
            out.push(diff);
            continue;
        }
        let a = ours.tensor_data(ot);
        let b = reference.tensor_data(rt);
        let bs = rt.ty.block_size();
        let mut ya = vec![0.0f32; bs];
        let mut yb = vec![0.0f32; bs];
        for (ca, cb) in a.chunks_exact(block_bytes).zip(b.chunks_exact(block_bytes)) {
            if ca != cb {
                diff.n_blocks_differ += 1;
                let ok = edgelm_kernels::dequantize_row(rt.ty, ca, &mut ya).is_ok()
                    && edgelm_kernels::dequantize_row(rt.ty, cb, &mut yb).is_ok();
                let m = if ok {
                    ya.iter()
                        .zip(&yb)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max)
                } else {
                    f32::INFINITY
                };
                diff.max_abs_diff = diff.max_abs_diff.max(m);
            }
        }
        out.push(diff);
    }
    out
}
