//! Reading and writing safetensors files (weights, gradients, checkpoints) through the
//! `safetensors` crate. Tensors are F32 or I64 (token ids), little-endian.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::TrainModel;
use crate::TrainError;

/// Metadata key holding the model config as JSON ([`crate::ConfigFile`]).
pub const CONFIG_KEY: &str = "edgelm.config";

/// A tensor read from a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    /// F32 values and their row-major shape.
    F32(Vec<usize>, Vec<f32>),
    /// I64 values and their row-major shape.
    I64(Vec<usize>, Vec<i64>),
}

/// The tensors and metadata of one safetensors file.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: HashMap<String, Tensor>,
    /// The `__metadata__` map.
    pub metadata: HashMap<String, String>,
}

fn st_err(what: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Safetensors {
        what: what.into(),
        message: e.to_string(),
    }
}

impl TensorFile {
    /// Parses `bytes`; `what` names the source in errors. F32, F16/BF16 (widened), I64 and
    /// I32 tensors are read; other types are an error.
    pub fn parse(bytes: &[u8], what: &str) -> Result<TensorFile, TrainError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| st_err(what, e))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| st_err(what, e))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.iter() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                Dtype::F32 => Tensor::F32(
                    shape,
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                Dtype::F16 => Tensor::F32(
                    shape,
                    data.chunks_exact(2)
                        .map(|b| edgelm_kernels::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                        .collect(),
                ),
                Dtype::BF16 => Tensor::F32(
                    shape,
                    data.chunks_exact(2)
                        .map(|b| edgelm_kernels::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                        .collect(),
                ),
                Dtype::I64 => Tensor::I64(
                    shape,
                    data.chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8")))
                        .collect(),
                ),
                Dtype::I32 => Tensor::I64(
                    shape,
                    data.chunks_exact(4)
                        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                        .collect(),
                ),
                other => {
                    return Err(st_err(
                        what,
                        format!("tensor {name} has type {other:?} (F32, F16, BF16, I64, I32 read)"),
                    ))
                }
            };
            tensors.insert(name.to_owned(), t);
        }
        Ok(TensorFile {
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<TensorFile, TrainError> {
        let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
            path: path.display().to_string(),
            source,
        })?;
        TensorFile::parse(&bytes, &path.display().to_string())
    }

    /// The F32 tensor `name` with its shape.
    pub fn f32(&self, name: &str) -> Result<(&[usize], &[f32]), TrainError> {
        match self.tensors.get(name) {
            Some(Tensor::F32(s, v)) => Ok((s, v)),
            Some(Tensor::I64(..)) => Err(st_err(name, "is an integer tensor, not F32")),
            None => Err(TrainError::MissingTensor {
                name: name.into(),
                file: "the safetensors file".into(),
            }),
        }
    }

    /// The integer tensor `name` with its shape.
    pub fn i64(&self, name: &str) -> Result<(&[usize], &[i64]), TrainError> {
        match self.tensors.get(name) {
            Some(Tensor::I64(s, v)) => Ok((s, v)),
            Some(Tensor::F32(..)) => Err(st_err(name, "is an F32 tensor, not integer")),
            None => Err(TrainError::MissingTensor {
                name: name.into(),
                file: "the safetensors file".into(),
            }),
        }
    }
}

/// One tensor to write.
pub enum WriteTensor<'a> {
    /// F32 values with a row-major shape.
    F32(Vec<usize>, &'a [f32]),
    /// I64 values with a row-major shape.
    I64(Vec<usize>, &'a [i64]),
}

/// Writes `tensors` and `metadata` to `path` (through a temporary file renamed into place, so
/// an existing file is replaced whole or not at all).
pub fn write(
    path: &Path,
    tensors: Vec<(String, WriteTensor<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let what = path.display().to_string();
    let mut views = BTreeMap::new();
    for (name, t) in &tensors {
        let view = match t {
            WriteTensor::F32(shape, v) => {
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
            }
            WriteTensor::I64(shape, v) => {
                TensorView::new(Dtype::I64, shape.clone(), bytemuck::cast_slice(v))
            }
        }
        .map_err(|e| st_err(&what, format!("{name}: {e}")))?;
        views.insert(name.clone(), view);
    }
    safetensors::tensor::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| st_err(&what, e))
}

impl TrainModel {
    /// The weights as (name, shape, values), in layout order, under `prefix`.
    pub fn named_tensors<'a>(
        &'a self,
        prefix: &str,
        values: &'a [f32],
    ) -> Vec<(String, WriteTensor<'a>)> {
        self.layout()
            .specs()
            .iter()
            .map(|s| {
                (
                    format!("{prefix}{}", s.name),
                    WriteTensor::F32(s.shape.clone(), &values[s.range()]),
                )
            })
            .collect()
    }

    /// The config as the JSON stored under [`CONFIG_KEY`].
    pub fn config_json(&self) -> String {
        serde_json::to_string(&crate::ConfigFile::from_model_config(self.config()))
            .expect("a config serializes")
    }

    /// Reads `values` ([n_params]) from `file`'s tensors `prefix + name`, checking each shape.
    pub fn read_values(
        &self,
        file: &TensorFile,
        prefix: &str,
        values: &mut [f32],
    ) -> Result<(), TrainError> {
        for s in self.layout().specs() {
            let name = format!("{prefix}{}", s.name);
            let (shape, v) = file.f32(&name)?;
            if shape != s.shape.as_slice() {
                return Err(TrainError::TensorMismatch {
                    name,
                    expected: format!("shape {:?}", s.shape),
                    found: format!("shape {shape:?}"),
                });
            }
            values[s.range()].copy_from_slice(v);
        }
        Ok(())
    }
}
