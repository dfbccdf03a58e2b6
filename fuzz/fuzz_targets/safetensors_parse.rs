//! Arbitrary bytes as a safetensors checkpoint: parsing and reading every tensor as f32 and
//! i64 return values or a `TrainError`, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(f) = edgelm_train::st::TensorFile::parse(data, "fuzz input") {
        for name in ["params.token_embd.weight", "edgelm.step", "x"] {
            let _ = f.f32(name);
            let _ = f.i64(name);
        }
    }
});
