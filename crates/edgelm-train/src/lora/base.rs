//! The frozen base of LoRA training: matrices stay in the GGUF file's types (memory-mapped,
//! Q4_1 and friends), dequantized a block of rows at a time into one reused f32 buffer for
//! each product; norm weights and biases are small and held as f32.
//!
//! Forward `y = x·Wᵀ` and backward `dx += dy·W` (no `dW`: the base is not trained) run on
//! the dequantized rows with the same dense sgemm as the f32 model, so the result equals the
//! f32 model's on the dequantized weights.

use std::sync::Arc;

use edgelm_gguf::{GgmlType, GgufFile};
use edgelm_kernels::dense::{sgemm, Layout};
use edgelm_model::ModelConfig;
use rayon::prelude::*;

use crate::params::ParamLayout;
use crate::{TrainError, TrainModel};

/// f32 values the row buffer holds: 2 Mi values (8 MiB). A layer matrix of the 135M model
/// fits at once; the 49152 × 576 output matrix goes in 15 blocks.
pub const ROW_BUFFER_VALUES: usize = 1 << 21;

/// Where a frozen matrix's values come from.
#[derive(Debug, Clone)]
enum Mat {
    /// Tensor `index` of the file, in its own ggml type.
    File { index: usize, ty: GgmlType },
    /// f32 values (the f32 reference path).
    Owned(Vec<f32>),
}

/// A frozen base model: config, parameter table (names and shapes), matrices in the file's
/// types, small vectors in f32.
#[derive(Debug, Clone)]
pub struct FrozenBase {
    config: ModelConfig,
    layout: ParamLayout,
    file: Option<Arc<GgufFile>>,
    /// Per spec of `layout`: a matrix, or None for vectors.
    mats: Vec<Option<Mat>>,
    /// Per spec of `layout`: f32 values of vectors (norms, biases), empty for matrices.
    vecs: Vec<Vec<f32>>,
    pub(crate) rope_freqs: Option<Vec<f32>>,
}

impl FrozenBase {
    /// Binds `file`'s tensors without converting the matrices (shapes checked; a tensor
    /// training does not implement is refused, as [`ParamLayout::load_gguf`] does).
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<FrozenBase, TrainError> {
        let config = ModelConfig::from_gguf(&file)?;
        let layout = ParamLayout::new(&config)?;
        if let Some(t) = file
            .tensors()
            .iter()
            .find(|t| t.name != "rope_freqs.weight" && layout.get(&t.name).is_none())
        {
            return Err(TrainError::TensorMismatch {
                name: t.name.clone(),
                expected: "only the tensors training implements".into(),
                found: "a tensor training does not know".into(),
            });
        }
        let mut mats = Vec::new();
        let mut vecs = Vec::new();
        for spec in layout.specs() {
            let index = file
                .tensors()
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| TrainError::MissingTensor {
                    name: spec.name.clone(),
                    file: "the GGUF file".into(),
                })?;
            let t = &file.tensors()[index];
            let mut dims: Vec<u64> = t.dims.clone();
            while dims.len() > spec.shape.len() && dims.last() == Some(&1) {
                dims.pop();
            }
            let want: Vec<u64> = spec.shape.iter().rev().map(|&d| d as u64).collect();
            if dims != want {
                return Err(TrainError::TensorMismatch {
                    name: spec.name.clone(),
                    expected: format!("ggml dims {want:?}"),
                    found: format!("{:?}", t.dims),
                });
            }
            if spec.is_matrix() {
                let n_in = spec.shape[1];
                if n_in % t.ty.block_size() != 0 {
                    return Err(TrainError::TensorMismatch {
                        name: spec.name.clone(),
                        expected: format!("rows of whole {} blocks", t.ty),
                        found: format!("{n_in} values per row"),
                    });
                }
                mats.push(Some(Mat::File { index, ty: t.ty }));
                vecs.push(Vec::new());
            } else {
                let mut v = vec![0.0f32; spec.len()];
                edgelm_kernels::dequantize_row(t.ty, file.tensor_data(t), &mut v).map_err(
                    |source| TrainError::Kernel {
                        op: format!("dequantize {}", spec.name),
                        source,
                    },
                )?;
                mats.push(None);
                vecs.push(v);
            }
        }
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            None => None,
            Some(t) => {
                let mut v = vec![0.0f32; config.rope_dim / 2];
                if t.n_elements() as usize != v.len() {
                    return Err(TrainError::TensorMismatch {
                        name: t.name.clone(),
                        expected: format!("{} elements", v.len()),
                        found: format!("{:?}", t.dims),
                    });
                }
                edgelm_kernels::dequantize_row(t.ty, file.tensor_data(t), &mut v).map_err(
                    |source| TrainError::Kernel {
                        op: "dequantize rope_freqs.weight".into(),
                        source,
                    },
                )?;
                Some(v)
            }
        };
        Ok(FrozenBase {
            config,
            layout,
            file: Some(file),
            mats,
            vecs,
            rope_freqs,
        })
    }

    /// The f32 reference path: the weights of an f32 training model, held as f32.
    pub fn from_train_model(m: &TrainModel) -> FrozenBase {
        let layout = m.layout().clone();
        let (mut mats, mut vecs) = (Vec::new(), Vec::new());
        for spec in layout.specs() {
            let v = m.params[spec.range()].to_vec();
            if spec.is_matrix() {
                mats.push(Some(Mat::Owned(v)));
                vecs.push(Vec::new());
            } else {
                mats.push(None);
                vecs.push(v);
            }
        }
        FrozenBase {
            config: m.config().clone(),
            layout,
            file: None,
            mats,
            vecs,
            rope_freqs: m.rope_freqs().map(<[f32]>::to_vec),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameter table (names and shapes of the base's tensors).
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Bytes of f32 data held besides the file (vectors, owned matrices).
    pub fn owned_bytes(&self) -> usize {
        let m: usize = self
            .mats
            .iter()
            .map(|m| match m {
                Some(Mat::Owned(v)) => v.len() * 4,
                _ => 0,
            })
            .sum();
        m + self.vecs.iter().map(|v| v.len() * 4).sum::<usize>()
    }

    /// The f32 values of vector tensor `index` (norm weight or bias).
    pub(crate) fn vec(&self, index: usize) -> &[f32] {
        &self.vecs[index]
    }

    /// Rows `r0..r1` of matrix `index` as f32: borrowed when owned, else dequantized into
    /// `buf`.
    fn rows<'a>(
        &'a self,
        index: usize,
        r0: usize,
        r1: usize,
        buf: &'a mut [f32],
    ) -> Result<&'a [f32], TrainError> {
        let n_in = self.layout.specs()[index].shape[1];
        match self.mats[index].as_ref().expect("a matrix index") {
            Mat::Owned(v) => Ok(&v[r0 * n_in..r1 * n_in]),
            Mat::File { index: ti, ty } => {
                let file = self
                    .file
                    .as_ref()
                    .expect("file-backed matrices have a file");
                let data = file.tensor_data(&file.tensors()[*ti]);
                let rb = n_in / ty.block_size() * ty.type_size();
                let out = &mut buf[..(r1 - r0) * n_in];
                out.par_chunks_mut(n_in)
                    .enumerate()
                    .try_for_each(|(i, row)| {
                        let r = r0 + i;
                        edgelm_kernels::dequantize_row(*ty, &data[r * rb..(r + 1) * rb], row)
                    })
                    .map_err(|source| TrainError::Kernel {
                        op: format!("dequantize {}", self.layout.specs()[index].name),
                        source,
                    })?;
                Ok(out)
            }
        }
    }

    /// Embedding rows of `tokens` into `out` ([N, C]).
    pub(crate) fn embed(
        &self,
        out: &mut [f32],
        tokens: &[u32],
        buf: &mut [f32],
    ) -> Result<(), TrainError> {
        let c = self.config.n_embd;
        let te = self.layout.token_embd;
        for (row, &tok) in out.chunks_exact_mut(c).zip(tokens) {
            let t = tok as usize;
            let v = self.rows(te, t, t + 1, buf)?;
            row.copy_from_slice(v);
        }
        Ok(())
    }
}

/// Block rows for a matrix of `n_in` columns and `n_out` rows.
fn block_rows(n_in: usize, n_out: usize) -> usize {
    (ROW_BUFFER_VALUES / n_in.max(1)).clamp(1, n_out.max(1))
}

/// Scratch for products with frozen matrices: the dequantized row block and, when a matrix
/// takes several blocks, the block's columns of the output (or of `dy`).
pub struct BaseScratch {
    pub(crate) rows: Vec<f32>,
    cols: Vec<f32>,
}

impl BaseScratch {
    /// Buffers for products of `n` rows with `base`'s matrices.
    pub fn new(base: &FrozenBase, n: usize) -> BaseScratch {
        let mut rows = 0;
        let mut cols = 0;
        for (spec, m) in base.layout.specs().iter().zip(&base.mats) {
            if m.is_none() {
                continue;
            }
            let (n_out, n_in) = (spec.shape[0], spec.shape[1]);
            let br = block_rows(n_in, n_out);
            rows = rows.max(br * n_in);
            if br < n_out {
                cols = cols.max(br * n);
            }
        }
        BaseScratch {
            rows: vec![0.0; rows.max(base.config.n_embd)],
            cols: vec![0.0; cols],
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.rows.len() + self.cols.len())
    }
}

fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: (&[f32], Layout),
    b: (&[f32], Layout),
    c: &mut [f32],
    acc: bool,
) {
    sgemm(
        m,
        n,
        k,
        a.0,
        a.1,
        b.0,
        b.1,
        c,
        acc,
        rayon::current_num_threads(),
    )
    .expect("frozen matmul: buffers sized by the caller's layout");
}

/// `out = x · Wᵀ` (or `out +=` when `add`) for frozen matrix `index` (`W`: [OC, C]); `x`:
/// [N, C], `out`: [N, OC].
pub(crate) fn frozen_matmul_forward(
    base: &FrozenBase,
    s: &mut BaseScratch,
    index: usize,
    out: &mut [f32],
    x: &[f32],
    n: usize,
    add: bool,
) -> Result<(), TrainError> {
    let (oc, c) = (
        base.layout.specs()[index].shape[0],
        base.layout.specs()[index].shape[1],
    );
    let br = block_rows(c, oc);
    let mut r0 = 0;
    while r0 < oc {
        let r1 = (r0 + br).min(oc);
        let k = r1 - r0;
        let w = base.rows(index, r0, r1, &mut s.rows)?;
        if k == oc {
            gemm(
                n,
                oc,
                c,
                (x, Layout::Normal),
                (w, Layout::Transposed),
                out,
                add,
            );
        } else {
            let tmp = &mut s.cols[..n * k];
            gemm(
                n,
                k,
                c,
                (x, Layout::Normal),
                (w, Layout::Transposed),
                tmp,
                false,
            );
            for (orow, trow) in out.chunks_exact_mut(oc).zip(tmp.chunks_exact(k)) {
                let dst = &mut orow[r0..r1];
                if add {
                    for (d, v) in dst.iter_mut().zip(trow) {
                        *d += v;
                    }
                } else {
                    dst.copy_from_slice(trow);
                }
            }
        }
        r0 = r1;
    }
    Ok(())
}

/// `dx += dy · W` for frozen matrix `index`; `dy`: [N, OC], `dx`: [N, C]. No weight gradient.
pub(crate) fn frozen_matmul_backward(
    base: &FrozenBase,
    s: &mut BaseScratch,
    index: usize,
    dx: &mut [f32],
    dy: &[f32],
    n: usize,
) -> Result<(), TrainError> {
    let (oc, c) = (
        base.layout.specs()[index].shape[0],
        base.layout.specs()[index].shape[1],
    );
    let br = block_rows(c, oc);
    let mut r0 = 0;
    while r0 < oc {
        let r1 = (r0 + br).min(oc);
        let k = r1 - r0;
        let w = base.rows(index, r0, r1, &mut s.rows)?;
        if k == oc {
            gemm(
                n,
                c,
                oc,
                (dy, Layout::Normal),
                (w, Layout::Normal),
                dx,
                true,
            );
        } else {
            let tmp = &mut s.cols[..n * k];
            for (trow, drow) in tmp.chunks_exact_mut(k).zip(dy.chunks_exact(oc)) {
                trow.copy_from_slice(&drow[r0..r1]);
            }
            gemm(
                n,
                c,
                k,
                (tmp, Layout::Normal),
                (w, Layout::Normal),
                dx,
                true,
            );
        }
        r0 = r1;
    }
    Ok(())
}
