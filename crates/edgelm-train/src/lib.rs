//! Training on the CPU: f32 forward and backward of the llama architecture (and qwen2's
//! biases, qwen3's per-head norms), the optimizer and its schedule, the training loop. Must not know about the CLI or files other than GGUF (weights in) and
//! safetensors (weights, gradients and checkpoints).
//!
//! The model here is a second definition of the architecture `edgelm-model` runs: inference
//! multiplies quantized weights by quantized activations and keeps no activations; training
//! needs f32 master weights, f32 activations saved for the backward, and a gradient per op.
//! The forward follows `edgelm-model`'s math (RMSNorm, RoPE pairs, GQA head mapping, SwiGLU,
//! tied embeddings); `tests/real_model.rs` checks the two agree on the real model.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
pub mod data;
pub mod distill;
mod error;
mod export;
pub mod lora;
mod model;
pub mod ops;
pub mod optim;
mod params;
pub mod st;
pub mod train;

pub use config::ConfigFile;
pub use error::TrainError;
pub use export::ExportType;
pub use model::{backward, backward_mixed, forward, TrainModel, Workspace};
pub use ops::IGNORE;
pub use params::{ParamLayout, TensorSpec};
