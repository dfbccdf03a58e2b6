//! edgelm-kernels (being written).
