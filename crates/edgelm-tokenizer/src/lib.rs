//! edgelm-tokenizer (being written).
