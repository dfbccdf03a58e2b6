//! edgelm-runtime (being written).
