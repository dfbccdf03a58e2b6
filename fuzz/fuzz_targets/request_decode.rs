//! Arbitrary bytes as an OpenAI request body: decoding, parameter validation and chat-message
//! extraction must return a value or an `ApiError` (400-class), never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(req) = edgelm_server::api::decode(data) {
        let _ = req.params();
        let _ = req.chat_messages();
    }
});
