//! edgelm-model (being written).
