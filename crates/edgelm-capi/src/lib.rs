//! edgelm-capi: the C API of edgelm, a thin boundary over [`edgelm_runtime::Llm`] and
//! [`edgelm_runtime::Session`]. The header `include/edgelm.h` is generated from this file by
//! cbindgen (`tests/header.rs` fails when the committed copy is stale).
//!
//! Boundary rules, kept by every `extern "C"` function here:
//! - no panic crosses it: each body runs under `catch_unwind` and a panic becomes
//!   `EDGELM_ERR_PANIC`;
//! - every pointer is checked for null and every string for UTF-8 before use, and bad input
//!   returns a status code, with the reason in the thread-local `edgelm_last_error()`;
//! - everything handed to C has its own free function (handles, strings, token arrays), and
//!   each accepts null.
//!
//! It knows nothing of model math or tokenization: it converts arguments and results.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// The C names (`edgelm_model`, `EDGELM_OK`) are the API; cbindgen copies them verbatim.
#![allow(non_camel_case_types)]

mod alloc;

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};

use edgelm_runtime::{
    ChatMessage, ContextOverflow, FinishReason, GenerateOptions, GenerationEvent, Llm, LoadOptions,
    RuntimeError, SamplerConfig, Session,
};

/// Status returned by every function that can fail. On anything but `EDGELM_OK`,
/// `edgelm_last_error()` says why.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum edgelm_status {
    /// Success.
    EDGELM_OK = 0,
    /// A required pointer argument was null.
    EDGELM_ERR_NULL_ARGUMENT = 1,
    /// A string argument is not valid UTF-8.
    EDGELM_ERR_INVALID_UTF8 = 2,
    /// An argument is out of range (a parameter, a token id, an empty prompt, ...).
    EDGELM_ERR_INVALID_ARGUMENT = 3,
    /// The model file cannot be read, parsed or bound (missing file, not GGUF, unsupported
    /// architecture, bad tokenizer or chat template metadata).
    EDGELM_ERR_MODEL_LOAD = 4,
    /// The model has no chat template.
    EDGELM_ERR_NO_CHAT_TEMPLATE = 5,
    /// Tokenizing a text or rendering the chat template failed.
    EDGELM_ERR_TOKENIZE = 6,
    /// The prompt does not fit in the session's context.
    EDGELM_ERR_CONTEXT_LENGTH = 7,
    /// Evaluating the model failed, or resources (memory, threads) ran out.
    EDGELM_ERR_EVAL = 8,
    /// An internal error (a Rust panic) was caught at the boundary. A session that reports it
    /// must be reset (`edgelm_session_reset`) before it is used again.
    EDGELM_ERR_PANIC = 9,
}

use edgelm_status::*;

/// Why a generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum edgelm_finish_reason {
    /// A stop string matched (it is not part of the text).
    EDGELM_FINISH_STOP = 0,
    /// `max_tokens` was reached, or the context is full.
    EDGELM_FINISH_LENGTH = 1,
    /// The model produced an end-of-generation token.
    EDGELM_FINISH_EOG = 2,
    /// The cancel flag was set, or the callback returned non-zero.
    EDGELM_FINISH_CANCELLED = 3,
}

/// `seed` value of `edgelm_session_params` that seeds the sampler from the operating system.
pub const EDGELM_SEED_RANDOM: u64 = u64::MAX;

/// `token` value passed to the stream callback for text that is not tied to one token (text
/// held back, e.g. as a possible stop string, and released when generation ends).
pub const EDGELM_TOKEN_NONE: u32 = u32::MAX;

/// A loaded model: weights (memory-mapped), tokenizer, chat template and worker threads.
///
/// Thread safety: immutable once loaded. One model may be used from several threads at once
/// (tokenize, detokenize, apply the chat template, create sessions). Sessions keep what they
/// need alive, so the model may be freed before its sessions.
pub struct edgelm_model {
    llm: Llm,
}

/// One generation context (KV cache, sampler, token history) over a model.
///
/// Thread safety: not safe for concurrent use. A session may be moved to another thread, but
/// only one thread may call into it at a time. Different sessions may generate in parallel.
pub struct edgelm_session {
    session: Session,
    /// Set while a generation runs; still set afterwards only if it panicked.
    poisoned: bool,
    /// NUL-terminated copy of the latest streamed text.
    text: Vec<u8>,
}

/// Settings for `edgelm_model_load`; start from `edgelm_model_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct edgelm_model_params {
    /// Worker threads; 0 means one per available core.
    pub n_threads: u32,
}

/// Settings for `edgelm_session_new`; start from `edgelm_session_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct edgelm_session_params {
    /// Context size in tokens: at least 2, at most the model's training context.
    pub n_ctx: u32,
    /// Temperature; 0 is greedy.
    pub temperature: f32,
    /// Top-k (0 disables).
    pub top_k: u32,
    /// Top-p / nucleus mass (1 disables).
    pub top_p: f32,
    /// Min-p (0 disables).
    pub min_p: f32,
    /// Repetition penalty (1 disables).
    pub repeat_penalty: f32,
    /// Tokens the penalties look back on (0 disables).
    pub repeat_last_n: u32,
    /// Presence penalty (0 disables).
    pub presence_penalty: f32,
    /// Frequency penalty (0 disables).
    pub frequency_penalty: f32,
    /// RNG seed, or `EDGELM_SEED_RANDOM`.
    pub seed: u64,
}

/// Settings for one `edgelm_generate` call; start from `edgelm_generate_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct edgelm_generate_params {
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// `n_stop` stop strings (UTF-8, NUL-terminated, non-empty); generation stops when the text
    /// contains one, which is left out of the text. May be null when `n_stop` is 0.
    pub stop: *const *const c_char,
    /// Number of stop strings.
    pub n_stop: usize,
    /// When the prompt does not fit, keep its most recent tokens (and shift the context when
    /// generation fills it) instead of failing with `EDGELM_ERR_CONTEXT_LENGTH`.
    pub context_shift: bool,
}

/// One chat message for `edgelm_apply_chat_template`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct edgelm_chat_message {
    /// "system", "user", "assistant", ... (UTF-8, NUL-terminated).
    pub role: *const c_char,
    /// The message text (UTF-8, NUL-terminated).
    pub content: *const c_char,
}

/// What `edgelm_generate` reports. Owns `text`: release it with `edgelm_generation_clear`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct edgelm_generation {
    /// Why generation ended.
    pub finish_reason: edgelm_finish_reason,
    /// The generated text (UTF-8, NUL-terminated; `text_len` bytes before the NUL), without any
    /// stop string.
    pub text: *mut c_char,
    /// Bytes of `text`.
    pub text_len: usize,
    /// Prompt tokens evaluated by this call (those reused from the KV cache excluded).
    pub n_prompt_tokens: usize,
    /// Leading prompt tokens reused from the previous call's KV cache.
    pub n_reused_tokens: usize,
    /// Tokens generated.
    pub n_generated_tokens: usize,
    /// Milliseconds spent on the prompt.
    pub prompt_ms: f64,
    /// Milliseconds spent generating after the prompt.
    pub generation_ms: f64,
}

/// Streaming callback of `edgelm_generate`: called for every generated token with the text it
/// releases (`len` bytes, UTF-8, NUL-terminated, possibly empty while text is held back), and
/// with `token == EDGELM_TOKEN_NONE` for held-back text released at the end. `text` is valid
/// only during the call. Return 0 to continue, anything else to stop
/// (`EDGELM_FINISH_CANCELLED`). The callback must not call into the same session.
pub type edgelm_stream_fn = Option<
    unsafe extern "C" fn(
        text: *const c_char,
        len: usize,
        token: u32,
        user_data: *mut c_void,
    ) -> i32,
>;

// ---------------------------------------------------------------------------------------------
// Errors and the boundary guard.

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status and message.
struct Failure {
    status: edgelm_status,
    message: String,
}

impl Failure {
    fn new(status: edgelm_status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn null(arg: &str) -> Self {
        Self::new(EDGELM_ERR_NULL_ARGUMENT, format!("`{arg}` is null"))
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(EDGELM_ERR_INVALID_ARGUMENT, message)
    }
}

/// The error and its sources, joined with ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        // Some errors already print their source; do not say it twice.
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::InvalidSampler { .. }
            | RuntimeError::InvalidOption { .. }
            | RuntimeError::EmptyPrompt
            | RuntimeError::TokenOutOfRange { .. }
            | RuntimeError::NotEnoughTokens { .. }
            | RuntimeError::BaseFile { .. } => EDGELM_ERR_INVALID_ARGUMENT,
            RuntimeError::ContextLength { .. } => EDGELM_ERR_CONTEXT_LENGTH,
            RuntimeError::Open { .. } | RuntimeError::Load { .. } => EDGELM_ERR_MODEL_LOAD,
            RuntimeError::Tokenizer { .. } => EDGELM_ERR_TOKENIZE,
            RuntimeError::NoChatTemplate => EDGELM_ERR_NO_CHAT_TEMPLATE,
            RuntimeError::Model { .. }
            | RuntimeError::State { .. }
            | RuntimeError::Threads { .. } => EDGELM_ERR_EVAL,
        };
        Self::new(status, chain(&e))
    }
}

fn set_last_error(message: &str) {
    // Interior NULs would truncate the message; show them instead.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}

/// Runs one entry point's body: panics are caught, the outcome becomes a status and the
/// thread's last-error message (empty on success).
fn guard(function: &str, body: impl FnOnce() -> Result<(), Failure>) -> edgelm_status {
    let outcome = catch_unwind(AssertUnwindSafe(body));
    let (status, message) = match outcome {
        Ok(Ok(())) => (EDGELM_OK, String::new()),
        Ok(Err(f)) => (f.status, format!("{function}: {}", f.message)),
        Err(payload) => (
            EDGELM_ERR_PANIC,
            format!(
                "{function}: internal error: {}",
                panic_message(payload.as_ref())
            ),
        ),
    };
    // Setting the message allocates; never let that unwind either.
    if catch_unwind(|| set_last_error(&message)).is_err() {
        return EDGELM_ERR_PANIC;
    }
    status
}

/// A `&str` from a NUL-terminated C string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives `'a`.
unsafe fn c_str<'a>(p: *const c_char, arg: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::null(arg));
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes.to_str().map_err(|e| {
        Failure::new(
            EDGELM_ERR_INVALID_UTF8,
            format!("`{arg}` is not valid UTF-8 ({e})"),
        )
    })
}

/// A slice from a C pointer and length (`ptr` may be null only when `n` is 0).
///
/// # Safety
/// When non-null, `ptr` points to `n` initialized values that outlive `'a`.
unsafe fn c_slice<'a, T>(ptr: *const T, n: usize, arg: &str) -> Result<&'a [T], Failure> {
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(arg));
    }
    if !ptr.is_aligned() {
        return Err(Failure::invalid(format!("`{arg}` is misaligned")));
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Failure::invalid(format!("`{arg}` length {n} is too large")));
    }
    // SAFETY: non-null, aligned, `n` values per the contract, size checked above.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// A string copied into a C allocation freed by `edgelm_string_free`.
fn c_string_out(s: &str) -> Result<*mut c_char, Failure> {
    alloc::alloc_array(s.as_bytes(), true)
        .map(|p| p.cast::<c_char>())
        .ok_or_else(|| Failure::new(EDGELM_ERR_EVAL, "out of memory"))
}

/// Checks an output pointer and writes through it.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, value: T) {
    // SAFETY: callers check `out` for null first; valid per the contract.
    unsafe { out.write(value) };
}

fn require_out<T>(out: *mut T, arg: &str) -> Result<(), Failure> {
    if out.is_null() {
        Err(Failure::null(arg))
    } else if !out.is_aligned() {
        Err(Failure::invalid(format!("`{arg}` is misaligned")))
    } else {
        Ok(())
    }
}

/// A shared reference to a handle.
///
/// # Safety
/// `p` is null or a live handle from this library.
unsafe fn handle<'a, T>(p: *const T, arg: &str) -> Result<&'a T, Failure> {
    // SAFETY: a non-null pointer is a live handle per the contract.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(arg))
}

/// An exclusive reference to a handle.
///
/// # Safety
/// `p` is null or a live handle from this library that no other thread uses now.
unsafe fn handle_mut<'a, T>(p: *mut T, arg: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: a non-null pointer is a live, unshared handle per the contract.
    unsafe { p.as_mut() }.ok_or_else(|| Failure::null(arg))
}

// ---------------------------------------------------------------------------------------------
// Library-level functions.

/// The library version, e.g. "0.1.0" (a static string; never null).
#[no_mangle]
pub extern "C" fn edgelm_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the version has no interior NUL"),
        };
    VERSION.as_ptr()
}

/// Why the latest call on this thread failed, or "" when it succeeded. Never null; valid
/// until the next edgelm call on this thread (copy it to keep it).
#[no_mangle]
pub extern "C" fn edgelm_last_error() -> *const c_char {
    // The pointer stays valid while the thread-local holds this CString.
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// Frees a string returned by this library (null is ignored).
///
/// # Safety
/// `s` is null or a string from this library not freed yet.
#[no_mangle]
pub unsafe extern "C" fn edgelm_string_free(s: *mut c_char) {
    // SAFETY: per the contract, `s` came from `c_string_out` (alloc_array::<u8>).
    unsafe { alloc::free_array(s.cast::<u8>()) }
}

/// Frees a token array returned by `edgelm_tokenize` (null is ignored).
///
/// # Safety
/// `tokens` is null or an array from `edgelm_tokenize` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn edgelm_tokens_free(tokens: *mut u32) {
    // SAFETY: per the contract, `tokens` came from alloc_array::<u32>.
    unsafe { alloc::free_array(tokens) }
}

/// The cached default model's path (`$EDGELM_HOME/models`, else `$XDG_CACHE_HOME/edgelm/models`,
/// else `~/.cache/edgelm/models`, then `SmolLM2-135M-Instruct.Q4_1.gguf`), whether or not it
/// has been fetched (`edgelm fetch`). Free `*out_path` with `edgelm_string_free`.
///
/// # Safety
/// `out_path` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn edgelm_default_model_path(out_path: *mut *mut c_char) -> edgelm_status {
    guard("edgelm_default_model_path", || {
        require_out(out_path, "out_path")?;
        let path = edgelm_runtime::default_model_path().ok_or_else(|| {
            Failure::invalid("no cache folder: set EDGELM_HOME, XDG_CACHE_HOME or HOME")
        })?;
        let path = path
            .to_str()
            .ok_or_else(|| Failure::new(EDGELM_ERR_INVALID_UTF8, "the cache path is not UTF-8"))?;
        let s = c_string_out(path)?;
        // SAFETY: checked non-null and aligned above; valid per the contract.
        unsafe { write_out(out_path, s) };
        Ok(())
    })
}

/// Default model settings (all cores).
#[no_mangle]
pub extern "C" fn edgelm_model_params_default() -> edgelm_model_params {
    edgelm_model_params { n_threads: 0 }
}

/// Default session settings: 2048 tokens of context, llama.cpp's default sampling
/// (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties), random seed.
#[no_mangle]
pub extern "C" fn edgelm_session_params_default() -> edgelm_session_params {
    let s = SamplerConfig::default();
    edgelm_session_params {
        n_ctx: 2048,
        temperature: s.temperature,
        top_k: u32::try_from(s.top_k).unwrap_or(u32::MAX),
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: u32::try_from(s.repeat_last_n).unwrap_or(u32::MAX),
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed: EDGELM_SEED_RANDOM,
    }
}

/// Default generation settings: at most 256 tokens, no stop strings, no context shift.
#[no_mangle]
pub extern "C" fn edgelm_generate_params_default() -> edgelm_generate_params {
    edgelm_generate_params {
        max_tokens: 256,
        stop: std::ptr::null(),
        n_stop: 0,
        context_shift: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Models.

/// Loads a GGUF model (`path`: UTF-8, NUL-terminated) with its tokenizer and chat template.
/// `params` may be null (defaults). On success `*out_model` is a handle to release with
/// `edgelm_model_free`; on failure it is set to null.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `params` is null or points to an
/// `edgelm_model_params`; `out_model` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_load(
    path: *const c_char,
    params: *const edgelm_model_params,
    out_model: *mut *mut edgelm_model,
) -> edgelm_status {
    guard("edgelm_model_load", || {
        require_out(out_model, "out_model")?;
        // SAFETY: checked above; valid per the contract.
        unsafe { write_out(out_model, std::ptr::null_mut()) };
        // SAFETY: per the contract.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: per the contract.
        let params = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(edgelm_model_params_default());
        let opts = LoadOptions {
            n_threads: params.n_threads as usize,
        };
        let llm = Llm::load_with(path, &opts).map_err(|e| match e {
            RuntimeError::Tokenizer { .. } => Failure::new(EDGELM_ERR_MODEL_LOAD, chain(&e)),
            e => Failure::from(e),
        })?;
        let model = Box::into_raw(Box::new(edgelm_model { llm }));
        // SAFETY: checked above.
        unsafe { write_out(out_model, model) };
        Ok(())
    })
}

/// Releases a model (null is ignored). Sessions made from it stay usable.
///
/// # Safety
/// `model` is null or a handle from `edgelm_model_load` not freed yet, and no other thread
/// is using it.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_free(model: *mut edgelm_model) {
    if model.is_null() {
        return;
    }
    // Dropping joins the worker threads; keep a panic there from unwinding into C.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract, `model` came from Box::into_raw in edgelm_model_load.
        drop(unsafe { Box::from_raw(model) });
    }));
}

/// Tokenizes `text` (UTF-8, NUL-terminated). `add_special` adds BOS/EOS as the model asks
/// (a BOS already at the start of the text is not doubled when `parse_special` is set);
/// `parse_special` turns control-token text such as "<|im_start|>" into those tokens — set both
/// for text from `edgelm_apply_chat_template`. On success `*out_tokens` holds `*out_n_tokens`
/// ids (free with `edgelm_tokens_free`; null when there are none).
///
/// # Safety
/// `model` is null or a live model; `text` null or NUL-terminated; `out_tokens` and
/// `out_n_tokens` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn edgelm_tokenize(
    model: *const edgelm_model,
    text: *const c_char,
    add_special: bool,
    parse_special: bool,
    out_tokens: *mut *mut u32,
    out_n_tokens: *mut usize,
) -> edgelm_status {
    guard("edgelm_tokenize", || {
        require_out(out_tokens, "out_tokens")?;
        require_out(out_n_tokens, "out_n_tokens")?;
        // SAFETY: both checked above.
        unsafe {
            write_out(out_tokens, std::ptr::null_mut());
            write_out(out_n_tokens, 0);
        }
        // SAFETY: per the contract.
        let model = unsafe { handle(model, "model") }?;
        // SAFETY: per the contract.
        let text = unsafe { c_str(text, "text") }?;
        let ids = model.llm.tokenize(text, add_special, parse_special)?;
        if ids.is_empty() {
            return Ok(());
        }
        let p = alloc::alloc_array(&ids, false)
            .ok_or_else(|| Failure::new(EDGELM_ERR_EVAL, "out of memory"))?;
        // SAFETY: both checked above.
        unsafe {
            write_out(out_tokens, p);
            write_out(out_n_tokens, ids.len());
        }
        Ok(())
    })
}

/// The text of `n_tokens` ids. `skip_special` leaves control tokens out (else their text is
/// rendered). Ids outside the vocabulary are `EDGELM_ERR_INVALID_ARGUMENT`. On success
/// `*out_text` is a NUL-terminated string to free with `edgelm_string_free`; `out_len`, when
/// not null, receives its length in bytes.
///
/// # Safety
/// `model` is null or a live model; `tokens` null or `n_tokens` ids; `out_text` null or valid
/// for a write; `out_len` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn edgelm_detokenize(
    model: *const edgelm_model,
    tokens: *const u32,
    n_tokens: usize,
    skip_special: bool,
    out_text: *mut *mut c_char,
    out_len: *mut usize,
) -> edgelm_status {
    guard("edgelm_detokenize", || {
        require_out(out_text, "out_text")?;
        // SAFETY: checked above.
        unsafe { write_out(out_text, std::ptr::null_mut()) };
        if !out_len.is_null() {
            require_out(out_len, "out_len")?;
        }
        // SAFETY: per the contract.
        let model = unsafe { handle(model, "model") }?;
        // SAFETY: per the contract.
        let ids = unsafe { c_slice(tokens, n_tokens, "tokens") }?;
        let text = model.llm.detokenize(ids, skip_special)?;
        let s = c_string_out(&text)?;
        // SAFETY: checked above.
        unsafe {
            write_out(out_text, s);
            if !out_len.is_null() {
                write_out(out_len, text.len());
            }
        }
        Ok(())
    })
}

/// Renders `n_messages` messages with the model's chat template; with
/// `add_generation_prompt` the text ends with the assistant's turn header. Tokenize the result
/// with `add_special` and `parse_special` set. Free `*out_text` with `edgelm_string_free`.
///
/// # Safety
/// `model` is null or a live model; `messages` null or `n_messages` messages whose strings are
/// null or NUL-terminated; `out_text` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn edgelm_apply_chat_template(
    model: *const edgelm_model,
    messages: *const edgelm_chat_message,
    n_messages: usize,
    add_generation_prompt: bool,
    out_text: *mut *mut c_char,
) -> edgelm_status {
    guard("edgelm_apply_chat_template", || {
        require_out(out_text, "out_text")?;
        // SAFETY: checked above.
        unsafe { write_out(out_text, std::ptr::null_mut()) };
        // SAFETY: per the contract.
        let model = unsafe { handle(model, "model") }?;
        // SAFETY: per the contract.
        let raw = unsafe { c_slice(messages, n_messages, "messages") }?;
        let mut list = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            // SAFETY: per the contract, each string is null or NUL-terminated.
            let role = unsafe { c_str(m.role, &format!("messages[{i}].role")) }?;
            // SAFETY: as above.
            let content = unsafe { c_str(m.content, &format!("messages[{i}].content")) }?;
            list.push(ChatMessage::new(role, content));
        }
        let text = model
            .llm
            .apply_chat_template(&list, add_generation_prompt)?;
        let s = c_string_out(&text)?;
        // SAFETY: checked above.
        unsafe { write_out(out_text, s) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Sessions.

fn sampler_config(p: &edgelm_session_params) -> SamplerConfig {
    SamplerConfig {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n as usize,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: (p.seed != EDGELM_SEED_RANDOM).then_some(p.seed),
    }
}

/// A new session over `model` (`params` may be null: defaults). On success `*out_session`
/// is a handle to release with `edgelm_session_free`; on failure it is set to null.
///
/// # Safety
/// `model` is null or a live model; `params` null or an `edgelm_session_params`;
/// `out_session` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_new(
    model: *const edgelm_model,
    params: *const edgelm_session_params,
    out_session: *mut *mut edgelm_session,
) -> edgelm_status {
    guard("edgelm_session_new", || {
        require_out(out_session, "out_session")?;
        // SAFETY: checked above.
        unsafe { write_out(out_session, std::ptr::null_mut()) };
        // SAFETY: per the contract.
        let model = unsafe { handle(model, "model") }?;
        // SAFETY: per the contract.
        let params = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(edgelm_session_params_default());
        let n_ctx_train = model.llm.model().config().n_ctx_train;
        let n_ctx = params.n_ctx as usize;
        if n_ctx < 2 || n_ctx > n_ctx_train.max(2) {
            return Err(Failure::invalid(format!(
                "n_ctx = {n_ctx}: must be between 2 and the model's training context, {n_ctx_train}"
            )));
        }
        let session = model.llm.session(n_ctx, sampler_config(&params))?;
        let s = Box::into_raw(Box::new(edgelm_session {
            session,
            poisoned: false,
            text: Vec::new(),
        }));
        // SAFETY: checked above.
        unsafe { write_out(out_session, s) };
        Ok(())
    })
}

/// Releases a session (null is ignored).
///
/// # Safety
/// `session` is null or a handle from `edgelm_session_new` not freed yet, and no other thread
/// is using it.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_free(session: *mut edgelm_session) {
    if session.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract, `session` came from Box::into_raw in edgelm_session_new.
        drop(unsafe { Box::from_raw(session) });
    }));
}

/// Forgets the session's conversation (empties its KV cache); also clears the state left by
/// an `EDGELM_ERR_PANIC`.
///
/// # Safety
/// `session` is null or a live session no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_reset(session: *mut edgelm_session) -> edgelm_status {
    guard("edgelm_session_reset", || {
        // SAFETY: per the contract.
        let s = unsafe { handle_mut(session, "session") }?;
        s.session.reset();
        s.poisoned = false;
        Ok(())
    })
}

/// Releases the text of a generation result and zeroes the struct (null is ignored).
///
/// # Safety
/// `result` is null or an `edgelm_generation` filled by `edgelm_generate` (or zeroed).
#[no_mangle]
pub unsafe extern "C" fn edgelm_generation_clear(result: *mut edgelm_generation) {
    if result.is_null() || !result.is_aligned() {
        return;
    }
    // SAFETY: per the contract, `text` is null or from c_string_out; the struct is valid for
    // reads and writes.
    unsafe {
        edgelm_string_free((*result).text);
        result.write(empty_generation());
    }
}

fn empty_generation() -> edgelm_generation {
    edgelm_generation {
        finish_reason: edgelm_finish_reason::EDGELM_FINISH_LENGTH,
        text: std::ptr::null_mut(),
        text_len: 0,
        n_prompt_tokens: 0,
        n_reused_tokens: 0,
        n_generated_tokens: 0,
        prompt_ms: 0.0,
        generation_ms: 0.0,
    }
}

/// Generates a continuation of `prompt` (`n_prompt` token ids: the whole conversation, e.g.
/// from `edgelm_apply_chat_template` + `edgelm_tokenize`). The prefix shared with the previous
/// call's prompt and reply is reused from the KV cache, so only new tokens are evaluated.
///
/// `params` may be null (defaults). `on_text` (may be null) streams the text, see
/// `edgelm_stream_fn`. `cancel` (may be null) points to a flag checked after the prompt is
/// evaluated and after every token: once it is non-zero, generation stops with
/// `EDGELM_FINISH_CANCELLED`. It may be set from another thread or a signal handler, with an
/// atomic store (C11 `atomic_store`, or `__atomic_store_n(flag, 1, __ATOMIC_RELAXED)`); the
/// library only reads it. `out_result` (may be null) receives the outcome; release its text
/// with `edgelm_generation_clear`. On failure `*out_result` holds no text (null, counts 0).
///
/// # Safety
/// `session` is null or a live session no other thread is using; `prompt` null or `n_prompt`
/// ids; `params` null or valid (with `n_stop` strings at `stop`); `cancel` null or an aligned
/// `int32_t` that stays valid during the call; `out_result` null or valid for a write.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn edgelm_generate(
    session: *mut edgelm_session,
    prompt: *const u32,
    n_prompt: usize,
    params: *const edgelm_generate_params,
    on_text: edgelm_stream_fn,
    user_data: *mut c_void,
    cancel: *const i32,
    out_result: *mut edgelm_generation,
) -> edgelm_status {
    guard("edgelm_generate", || {
        if !out_result.is_null() {
            require_out(out_result, "out_result")?;
            // SAFETY: checked above; valid per the contract.
            unsafe { write_out(out_result, empty_generation()) };
        }
        // SAFETY: per the contract.
        let s = unsafe { handle_mut(session, "session") }?;
        if s.poisoned {
            return Err(Failure::new(
                EDGELM_ERR_PANIC,
                "the session failed internally before; call edgelm_session_reset",
            ));
        }
        if n_prompt == 0 {
            return Err(Failure::invalid("the prompt is empty (n_prompt = 0)"));
        }
        // SAFETY: per the contract.
        let prompt = unsafe { c_slice(prompt, n_prompt, "prompt") }?;
        // SAFETY: per the contract.
        let params = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(edgelm_generate_params_default());
        // SAFETY: per the contract, `stop` holds `n_stop` pointers.
        let stop_ptrs = unsafe { c_slice(params.stop, params.n_stop, "params.stop") }?;
        let mut stop = Vec::with_capacity(stop_ptrs.len());
        for (i, &p) in stop_ptrs.iter().enumerate() {
            // SAFETY: per the contract, each is null or NUL-terminated.
            let text = unsafe { c_str(p, &format!("params.stop[{i}]")) }?;
            stop.push(text.to_string());
        }
        let opts = GenerateOptions {
            max_tokens: params.max_tokens as usize,
            stop,
            overflow: if params.context_shift {
                ContextOverflow::SlidingWindow
            } else {
                ContextOverflow::Error
            },
        };
        let cancel = if cancel.is_null() {
            None
        } else if !cancel.is_aligned() {
            return Err(Failure::invalid("`cancel` is misaligned"));
        } else {
            // SAFETY: non-null, aligned, valid for the call per the contract; the library only
            // loads it atomically and writers use atomic stores.
            Some(unsafe { AtomicI32::from_ptr(cancel.cast_mut()) })
        };
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed) != 0);

        let buf = &mut s.text;
        s.poisoned = true;
        let result = s.session.generate(prompt, &opts, |ev| {
            if cancelled() {
                return ControlFlow::Break(());
            }
            let (text, token) = match *ev {
                GenerationEvent::PromptProcessed { .. } => return ControlFlow::Continue(()),
                GenerationEvent::Token { id, text } => (text, id),
                GenerationEvent::Text { text } => (text, EDGELM_TOKEN_NONE),
            };
            if let Some(f) = on_text {
                buf.clear();
                buf.extend_from_slice(text.as_bytes());
                buf.push(0);
                // SAFETY: the callback gets a NUL-terminated buffer of `len + 1` bytes that
                // lives until it returns, and the caller's own `user_data`.
                let verdict = unsafe { f(buf.as_ptr().cast(), text.len(), token, user_data) };
                if verdict != 0 {
                    return ControlFlow::Break(());
                }
            }
            if cancelled() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        s.poisoned = false;
        let result = result?;
        if !out_result.is_null() {
            let text = c_string_out(&result.text)?;
            let t = &result.timings;
            let g = edgelm_generation {
                finish_reason: match result.finish_reason {
                    FinishReason::Stop => edgelm_finish_reason::EDGELM_FINISH_STOP,
                    FinishReason::Length => edgelm_finish_reason::EDGELM_FINISH_LENGTH,
                    FinishReason::Eog => edgelm_finish_reason::EDGELM_FINISH_EOG,
                    FinishReason::Cancelled => edgelm_finish_reason::EDGELM_FINISH_CANCELLED,
                },
                text,
                text_len: result.text.len(),
                n_prompt_tokens: t.n_prompt_tokens,
                n_reused_tokens: result.n_reused_tokens,
                n_generated_tokens: result.tokens.len(),
                prompt_ms: t.prompt_ms,
                generation_ms: t.gen_ms,
            };
            // SAFETY: checked at the top.
            unsafe { write_out(out_result, g) };
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads_as_documented() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<edgelm_model>();
        send::<edgelm_session>();
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard("f", || panic!("boom"));
        assert_eq!(status, EDGELM_ERR_PANIC);
        // SAFETY: never null, NUL-terminated.
        let msg = unsafe { CStr::from_ptr(edgelm_last_error()) };
        assert_eq!(msg.to_str().unwrap(), "f: internal error: boom");
        assert_eq!(guard("g", || Ok(())), EDGELM_OK);
        // SAFETY: as above.
        assert!(unsafe { CStr::from_ptr(edgelm_last_error()) }.is_empty());
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(edgelm_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
