//! The crate's error type.

/// Everything training can reject, with the tensor, file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] edgelm_gguf::GgufError),
    /// The GGUF config or tensors are invalid for the model.
    #[error(transparent)]
    Model(#[from] edgelm_model::ModelError),
    /// A kernel rejected its arguments.
    #[error("{op}: {source}")]
    Kernel {
        /// What was being done.
        op: String,
        /// The kernel's error.
        source: edgelm_kernels::KernelError,
    },
    /// A tensor is missing from a weights file.
    #[error("tensor {name} is missing from {file}")]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// Which file.
        file: String,
    },
    /// A tensor has the wrong shape or type for the model's config.
    #[error("tensor {name}: expected {expected}, found {found}")]
    TensorMismatch {
        /// Tensor name.
        name: String,
        /// What the config requires.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A config value is invalid.
    #[error("bad config: {key}: {reason}")]
    BadConfig {
        /// The field.
        key: String,
        /// Why.
        reason: String,
    },
    /// A batch does not fit the workspace or the vocabulary.
    #[error("bad batch: {0}")]
    BadBatch(String),
    /// A safetensors file could not be parsed or written.
    #[error("safetensors {what}: {message}")]
    Safetensors {
        /// Which file or operation.
        what: String,
        /// The underlying error.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The loss or the gradients stopped being finite; the weights were not updated.
    #[error("step {step}: the {what} is not finite (NaN or infinite); stopping before the weights change")]
    NonFinite {
        /// The update that failed (1-based).
        step: u64,
        /// "loss" or "gradient norm".
        what: &'static str,
    },
    /// A checkpoint cannot be resumed.
    #[error("checkpoint {path} cannot be resumed: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A line of the training data cannot be used.
    #[error("line {line}: {reason}")]
    BadData {
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A distillation teacher cache cannot be used.
    #[error("teacher cache {path}: {reason}")]
    TeacherCache {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A buffer size overflowed.
    #[error("size overflow computing {what}")]
    Overflow {
        /// What was being sized.
        what: &'static str,
    },
}
