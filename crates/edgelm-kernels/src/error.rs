//! The crate's error type.

use edgelm_gguf::GgmlType;

/// Everything a kernel entry point can reject. Variants carry the type, the operation and the
/// offending sizes so a caller can say which tensor was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// `ty` has no implementation of `op` (e.g. the IQ formats, or `vec_dot` on an
    /// activation-only type such as Q8_K).
    #[error("{op} is not supported for type {ty}")]
    Unsupported {
        /// The element type.
        ty: GgmlType,
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A buffer has the wrong length.
    #[error("{what}: wrong length for {ty}: expected {expected}, got {got}")]
    BadLength {
        /// The element type of the buffer.
        ty: GgmlType,
        /// Which buffer (e.g. "matmul weights").
        what: &'static str,
        /// The length required by the other arguments.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// An element count is not a whole number of blocks.
    #[error("{n} elements is not a whole number of {ty} blocks of {block_size}")]
    NotBlockMultiple {
        /// The element type.
        ty: GgmlType,
        /// The element count.
        n: usize,
        /// Elements per block of `ty`.
        block_size: usize,
    },
    /// A size computation overflowed `usize`.
    #[error("size overflow computing {what}")]
    Overflow {
        /// What was being sized.
        what: &'static str,
    },
    /// `matmul_many` was given matrices whose weight types multiply different activation
    /// types; they must share the one quantized input.
    #[error("matmul_many: {weight} weights take {wanted} activations, the input is {given}")]
    ActivationTypeMismatch {
        /// The weight type of the offending matrix.
        weight: GgmlType,
        /// The activation type it takes.
        wanted: GgmlType,
        /// The activation type of the first matrix (the input's).
        given: GgmlType,
    },
    /// `matmul_many` was given more matrices than it takes.
    #[error("matmul_many: {n} matrices, at most {max} in one call")]
    TooManyMatmulJobs {
        /// Matrices given.
        n: usize,
        /// Most matrices one call takes.
        max: usize,
    },
    /// The thread pool could not be built.
    #[error("cannot build a thread pool of {n_threads} threads: {message}")]
    ThreadPool {
        /// Requested thread count.
        n_threads: usize,
        /// The underlying error.
        message: String,
    },
}
