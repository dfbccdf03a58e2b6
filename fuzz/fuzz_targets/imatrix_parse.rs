//! Arbitrary bytes as an importance-matrix file (llama.cpp's GGUF or legacy `.dat` format):
//! a value or an `ImatrixError`, never a panic or an unbounded allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = edgelm_quant::imatrix::Imatrix::from_legacy(data);
    let _ = edgelm_quant::imatrix::Imatrix::from_bytes(data.to_vec());
});
