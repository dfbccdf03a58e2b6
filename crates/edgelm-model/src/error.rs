//! The crate's one error type.

use edgelm_gguf::{GgmlType, GgufError};
use edgelm_kernels::KernelError;

/// Everything loading a model or running its forward pass can reject. Variants name the tensor,
/// key or argument at fault and carry the shapes involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading metadata failed (missing key, wrong value type, out of range).
    #[error("model metadata: {0}")]
    Metadata(#[from] GgufError),
    /// `general.architecture` names an architecture this crate does not implement.
    #[error("unsupported architecture '{arch}' (supported: llama, qwen2, qwen3)")]
    UnsupportedArch {
        /// The architecture string from the file.
        arch: String,
    },
    /// A hyper-parameter is missing, zero, inconsistent or unsupported.
    #[error("bad model config: {key}: {reason}")]
    BadConfig {
        /// The metadata key (or derived quantity) at fault.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("missing tensor '{name}'")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor's dims disagree with the config.
    #[error("tensor '{name}' has dims {found:?}, expected {expected:?}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Dims the config implies (ggml order, `[0]` = row length).
        expected: Vec<u64>,
        /// Dims in the file.
        found: Vec<u64>,
    },
    /// A tensor's element type cannot be used where it is.
    #[error("tensor '{name}' has type {ty}, which cannot be used as {role}")]
    TensorType {
        /// Tensor name.
        name: String,
        /// Its type.
        ty: GgmlType,
        /// What it is used for ("a matmul weight", "a norm weight", ...).
        role: &'static str,
    },
    /// A kernel rejected its arguments.
    #[error("kernel error in {op}: {source}")]
    Kernel {
        /// The operation (and tensor) being computed.
        op: String,
        /// The kernel's error.
        #[source]
        source: KernelError,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {token} at index {index} is out of range (n_vocab = {n_vocab})")]
    InvalidToken {
        /// The id.
        token: u32,
        /// Its index in the input.
        index: usize,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// `forward` was called with no tokens.
    #[error("forward called with no tokens")]
    EmptyInput,
    /// The tokens do not fit in the state's context.
    #[error("context full: {needed} positions needed, the context holds {n_ctx}")]
    ContextFull {
        /// Context size of the state.
        n_ctx: usize,
        /// Positions the call would need.
        needed: usize,
    },
    /// An argument is out of its domain (zero context, zero batch, ...).
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A LoRA adapter file cannot be applied to this model.
    #[error("LoRA adapter: {reason}")]
    BadAdapter {
        /// Why (tensor, shape or metadata at fault).
        reason: String,
    },
    /// A size computation overflowed.
    #[error("size overflow computing {what}")]
    Overflow {
        /// What was being sized.
        what: &'static str,
    },
}

impl ModelError {
    pub(crate) fn bad_config(key: impl Into<String>, reason: impl Into<String>) -> ModelError {
        ModelError::BadConfig {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
