//! Architecture-specific kernels, reached only through the dispatch table.

// Little-endian only: the kernels read the blocks' multi-byte fields in place.
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
pub(crate) mod aarch64;
#[cfg(test)]
pub(crate) mod lane_model;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;
