//! Architecture-specific kernels, reached only through the dispatch table.

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
#[cfg(test)]
pub(crate) mod lane_model;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;
