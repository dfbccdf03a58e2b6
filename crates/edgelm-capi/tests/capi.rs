//! The C API called from Rust the way C calls it: null and invalid arguments, bad files, then
//! (when the default model is cached) tokenize/detokenize, the chat template, streaming,
//! the cancel flag and a callback that stops, checked against the Rust library.
//! Real-model tests skip with a message when the model is absent.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use edgelm_capi::edgelm_finish_reason::*;
use edgelm_capi::edgelm_status::*;
use edgelm_capi::*;

fn last_error() -> String {
    // SAFETY: never null, NUL-terminated, read before the next call.
    unsafe { CStr::from_ptr(edgelm_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("EDGELM_MODEL")
        .map(PathBuf::from)
        .or_else(edgelm_runtime::default_model_path)?;
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: real model {} is absent", p.display());
        None
    }
}

/// An owned model handle for the tests.
struct Model(*mut edgelm_model);

impl Model {
    fn load() -> Option<Model> {
        let path = CString::new(model_path()?.to_str()?).ok()?;
        let mut m = null_mut();
        let params = edgelm_model_params { n_threads: 2 };
        // SAFETY: valid C string, params and out pointer.
        let status = unsafe { edgelm_model_load(path.as_ptr(), &params, &mut m) };
        assert_eq!(status, EDGELM_OK, "{}", last_error());
        assert!(!m.is_null());
        Some(Model(m))
    }

    fn tokenize(&self, text: &str, special: bool) -> Vec<u32> {
        let text = CString::new(text).unwrap();
        let (mut p, mut n) = (null_mut(), 0usize);
        // SAFETY: live model, C string, out pointers.
        let status =
            unsafe { edgelm_tokenize(self.0, text.as_ptr(), special, special, &mut p, &mut n) };
        assert_eq!(status, EDGELM_OK, "{}", last_error());
        // SAFETY: `p` holds `n` ids (or is null with n == 0); freed once below.
        let ids = if n == 0 {
            Vec::new()
        } else {
            unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
        };
        // SAFETY: from edgelm_tokenize.
        unsafe { edgelm_tokens_free(p) };
        ids
    }

    fn detokenize(&self, ids: &[u32]) -> Result<String, edgelm_status> {
        let (mut s, mut len) = (null_mut(), 0usize);
        // SAFETY: live model, `ids.len()` ids, out pointers.
        let status =
            unsafe { edgelm_detokenize(self.0, ids.as_ptr(), ids.len(), false, &mut s, &mut len) };
        if status != EDGELM_OK {
            assert!(s.is_null());
            return Err(status);
        }
        // SAFETY: `s` holds `len` bytes and a NUL; freed once.
        let text = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
        let text = String::from_utf8(text.to_vec()).unwrap();
        // SAFETY: from edgelm_detokenize.
        unsafe { edgelm_string_free(s) };
        Ok(text)
    }

    fn chat_prompt(&self, user: &str) -> Vec<u32> {
        let role = CString::new("user").unwrap();
        let content = CString::new(user).unwrap();
        let msg = edgelm_chat_message {
            role: role.as_ptr(),
            content: content.as_ptr(),
        };
        let mut s = null_mut();
        // SAFETY: live model, one message of valid strings, out pointer.
        let status = unsafe { edgelm_apply_chat_template(self.0, &msg, 1, true, &mut s) };
        assert_eq!(status, EDGELM_OK, "{}", last_error());
        // SAFETY: NUL-terminated string from the library; freed once.
        let text = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
        // SAFETY: from edgelm_apply_chat_template.
        unsafe { edgelm_string_free(s) };
        self.tokenize(&text, true)
    }

    fn session(&self, params: edgelm_session_params) -> Session {
        let mut s = null_mut();
        // SAFETY: live model, params, out pointer.
        let status = unsafe { edgelm_session_new(self.0, &params, &mut s) };
        assert_eq!(status, EDGELM_OK, "{}", last_error());
        Session(s)
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: from edgelm_model_load, freed once.
        unsafe { edgelm_model_free(self.0) };
    }
}

struct Session(*mut edgelm_session);

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: from edgelm_session_new, freed once.
        unsafe { edgelm_session_free(self.0) };
    }
}

fn greedy(n_ctx: u32) -> edgelm_session_params {
    edgelm_session_params {
        n_ctx,
        temperature: 0.0,
        ..edgelm_session_params_default()
    }
}

/// What the stream callback saw.
#[derive(Default)]
struct Stream {
    text: String,
    tokens: Vec<u32>,
    /// Return non-zero once this many tokens were seen.
    stop_after: Option<usize>,
    /// Set this flag once this many tokens were seen.
    cancel_after: Option<(usize, *const AtomicI32)>,
    /// Tokens seen so far, for another thread to watch.
    progress: Option<*const AtomicUsize>,
}

unsafe extern "C" fn on_text(
    text: *const c_char,
    len: usize,
    token: u32,
    user: *mut c_void,
) -> i32 {
    // SAFETY: `user` is the &mut Stream passed to edgelm_generate; `text` holds `len` bytes
    // followed by a NUL.
    let (st, bytes) = unsafe {
        (
            &mut *user.cast::<Stream>(),
            std::slice::from_raw_parts(text.cast::<u8>(), len + 1),
        )
    };
    assert_eq!(bytes[len], 0, "the text is NUL-terminated");
    st.text
        .push_str(std::str::from_utf8(&bytes[..len]).expect("UTF-8"));
    if token != EDGELM_TOKEN_NONE {
        st.tokens.push(token);
    }
    if let Some(p) = st.progress {
        // SAFETY: the counter outlives the generate call.
        unsafe { (*p).store(st.tokens.len(), Ordering::Release) };
    }
    if let Some((n, flag)) = st.cancel_after {
        if st.tokens.len() == n {
            // SAFETY: the flag outlives the generate call.
            unsafe { (*flag).store(1, Ordering::Relaxed) };
        }
    }
    i32::from(st.stop_after.is_some_and(|n| st.tokens.len() >= n))
}

struct Outcome {
    status: edgelm_status,
    result: edgelm_generation,
    text: String,
}

fn generate(
    s: &Session,
    prompt: &[u32],
    max_tokens: u32,
    stream: &mut Stream,
    cancel: Option<&AtomicI32>,
) -> Outcome {
    let params = edgelm_generate_params {
        max_tokens,
        ..edgelm_generate_params_default()
    };
    let mut result = edgelm_generation {
        text: std::ptr::dangling_mut(), // garbage the call must overwrite
        ..empty_generation()
    };
    // SAFETY: live session, `prompt.len()` ids, params, callback and its user data, an
    // optional flag outliving the call, an out struct.
    let status = unsafe {
        edgelm_generate(
            s.0,
            prompt.as_ptr(),
            prompt.len(),
            &params,
            Some(on_text),
            (stream as *mut Stream).cast(),
            cancel.map_or(null(), |c| c.as_ptr().cast_const()),
            &mut result,
        )
    };
    let text = if result.text.is_null() {
        String::new()
    } else {
        // SAFETY: `text_len` bytes from the library.
        let b = unsafe { std::slice::from_raw_parts(result.text.cast::<u8>(), result.text_len) };
        String::from_utf8(b.to_vec()).unwrap()
    };
    let copy = result;
    // SAFETY: filled by edgelm_generate; clears once.
    unsafe { edgelm_generation_clear(&mut result) };
    assert!(result.text.is_null());
    Outcome {
        status,
        result: copy,
        text,
    }
}

fn empty_generation() -> edgelm_generation {
    edgelm_generation {
        finish_reason: EDGELM_FINISH_LENGTH,
        text: null_mut(),
        text_len: 0,
        n_prompt_tokens: 0,
        n_reused_tokens: 0,
        n_generated_tokens: 0,
        prompt_ms: 0.0,
        generation_ms: 0.0,
    }
}

// ---------------------------------------------------------------------------------------------
// Without a model.

#[test]
fn null_arguments_are_reported_not_dereferenced() {
    let mut m = null_mut();
    // SAFETY: null pointers are what is under test; `m` is a valid out pointer.
    unsafe {
        assert_eq!(
            edgelm_model_load(null(), null(), &mut m),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(last_error().contains("`path` is null"), "{}", last_error());
        assert!(m.is_null());
        let path = c"/nonexistent.gguf";
        assert_eq!(
            edgelm_model_load(path.as_ptr(), null(), null_mut()),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(last_error().contains("out_model"), "{}", last_error());

        let (mut toks, mut n) = (null_mut(), 0usize);
        assert_eq!(
            edgelm_tokenize(null(), c"hi".as_ptr(), true, true, &mut toks, &mut n),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(last_error().contains("`model` is null"));
        assert_eq!(
            edgelm_tokenize(null(), c"hi".as_ptr(), true, true, null_mut(), &mut n),
            EDGELM_ERR_NULL_ARGUMENT
        );
        let mut s = null_mut();
        assert_eq!(
            edgelm_detokenize(null(), null(), 0, false, &mut s, null_mut()),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            edgelm_apply_chat_template(null(), null(), 0, true, &mut s),
            EDGELM_ERR_NULL_ARGUMENT
        );
        let mut sess = null_mut();
        assert_eq!(
            edgelm_session_new(null(), null(), &mut sess),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(sess.is_null());
        assert_eq!(edgelm_session_reset(null_mut()), EDGELM_ERR_NULL_ARGUMENT);
        let mut g = empty_generation();
        let t = [1u32];
        assert_eq!(
            edgelm_generate(
                null_mut(),
                t.as_ptr(),
                1,
                null(),
                None,
                null_mut(),
                null(),
                &mut g
            ),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(last_error().contains("`session` is null"));
        assert_eq!(
            edgelm_default_model_path(null_mut()),
            EDGELM_ERR_NULL_ARGUMENT
        );

        // Every free function accepts null.
        edgelm_model_free(null_mut());
        edgelm_session_free(null_mut());
        edgelm_string_free(null_mut());
        edgelm_tokens_free(null_mut());
        edgelm_generation_clear(null_mut());
        edgelm_generation_clear(&mut g);
    }
}

#[test]
fn a_success_clears_the_last_error() {
    // SAFETY: null path on purpose, then a valid out pointer.
    unsafe {
        assert_eq!(
            edgelm_model_load(null(), null(), null_mut()),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(!last_error().is_empty());
        let mut p = null_mut();
        assert_eq!(edgelm_default_model_path(&mut p), EDGELM_OK);
        assert_eq!(last_error(), "");
        let path = CStr::from_ptr(p).to_str().unwrap().to_string();
        edgelm_string_free(p);
        assert!(
            path.ends_with("/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "{path}"
        );
    }
}

#[test]
fn the_last_error_is_per_thread() {
    // SAFETY: null path on purpose.
    assert_eq!(
        unsafe { edgelm_model_load(null(), null(), null_mut()) },
        EDGELM_ERR_NULL_ARGUMENT
    );
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(!last_error().is_empty());
}

#[test]
fn invalid_utf8_and_bad_files_are_errors() {
    let mut m = null_mut();
    let bad = b"/tmp/\xff\xfe.gguf\0";
    // SAFETY: a NUL-terminated byte string and an out pointer.
    let status = unsafe { edgelm_model_load(bad.as_ptr().cast(), null(), &mut m) };
    assert_eq!(status, EDGELM_ERR_INVALID_UTF8);
    assert!(
        last_error().contains("`path` is not valid UTF-8"),
        "{}",
        last_error()
    );

    // SAFETY: as above.
    let status =
        unsafe { edgelm_model_load(c"/nonexistent/dir/model.gguf".as_ptr(), null(), &mut m) };
    assert_eq!(status, EDGELM_ERR_MODEL_LOAD);
    assert!(m.is_null());
    assert!(
        last_error().contains("/nonexistent/dir/model.gguf"),
        "{}",
        last_error()
    );

    let dir = std::env::temp_dir().join(format!("edgelm-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a GGUF file at all, just some text").unwrap();
    let c = CString::new(junk.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    let status = unsafe { edgelm_model_load(c.as_ptr(), null(), &mut m) };
    let err = last_error();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(status, EDGELM_ERR_MODEL_LOAD, "{err}");
    assert!(m.is_null());
    assert!(
        err.starts_with("edgelm_model_load: cannot read the GGUF file"),
        "{err}"
    );
}

#[test]
fn defaults_are_llama_cpp_s() {
    let p = edgelm_session_params_default();
    assert_eq!(
        (p.n_ctx, p.temperature, p.top_k, p.seed),
        (2048, 0.8, 40, EDGELM_SEED_RANDOM)
    );
    let g = edgelm_generate_params_default();
    assert_eq!(
        (g.max_tokens, g.n_stop, g.stop.is_null(), g.context_shift),
        (256, 0, true, false)
    );
    assert_eq!(edgelm_model_params_default().n_threads, 0);
}

// ---------------------------------------------------------------------------------------------
// With the real model.

#[test]
fn tokenize_and_detokenize_round_trip() {
    let Some(m) = Model::load() else { return };
    let text = "Hello world! Ünïcödé, emoji 🦀 and\nnew lines.";
    let ids = m.tokenize(text, false);
    assert!(ids.len() > 5);
    assert_eq!(m.detokenize(&ids).unwrap(), text);
    // The same ids as the Rust library.
    let llm = edgelm_runtime::Llm::load(model_path().unwrap()).unwrap();
    assert_eq!(ids, llm.tokenize(text, false, false).unwrap());

    // Special-token text is parsed only when asked.
    let plain = m.tokenize("<|im_start|>", false);
    let special = m.tokenize("<|im_start|>", true);
    assert_eq!(special.len(), 1);
    assert!(plain.len() > 1);

    assert_eq!(m.detokenize(&[u32::MAX]), Err(EDGELM_ERR_INVALID_ARGUMENT));
    assert!(
        last_error().contains("outside the vocabulary"),
        "{}",
        last_error()
    );
    assert_eq!(m.detokenize(&[]).unwrap(), "");

    let (mut p, mut n) = (null_mut(), 0usize);
    let bad = b"caf\xe9\0";
    // SAFETY: live model, NUL-terminated bytes, out pointers.
    let status = unsafe { edgelm_tokenize(m.0, bad.as_ptr().cast(), true, true, &mut p, &mut n) };
    assert_eq!(status, EDGELM_ERR_INVALID_UTF8);
    assert!(p.is_null() && n == 0);
    // SAFETY: null ids with a non-zero count.
    let mut s = null_mut();
    let status = unsafe { edgelm_detokenize(m.0, null(), 3, false, &mut s, null_mut()) };
    assert_eq!(status, EDGELM_ERR_NULL_ARGUMENT);
}

#[test]
fn chat_template_renders_and_validates_messages() {
    let Some(m) = Model::load() else { return };
    let ids = m.chat_prompt("What is 2+2?");
    let text = m.detokenize(&ids).unwrap();
    assert!(
        text.contains("<|im_start|>user\nWhat is 2+2?<|im_end|>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    let im_start = m.tokenize("<|im_start|>", true)[0];
    assert_eq!(
        ids.iter().filter(|&&t| t == im_start).count(),
        3,
        "system, user, assistant headers"
    );

    let bad = b"\xc3\x28\0";
    let msgs = [
        edgelm_chat_message {
            role: c"user".as_ptr(),
            content: c"hi".as_ptr(),
        },
        edgelm_chat_message {
            role: null(),
            content: c"hi".as_ptr(),
        },
        edgelm_chat_message {
            role: c"user".as_ptr(),
            content: bad.as_ptr().cast(),
        },
    ];
    let mut s = null_mut();
    // SAFETY: live model; message arrays of the given lengths; out pointer.
    unsafe {
        assert_eq!(
            edgelm_apply_chat_template(m.0, msgs.as_ptr(), 2, true, &mut s),
            EDGELM_ERR_NULL_ARGUMENT
        );
        assert!(
            last_error().contains("messages[1].role"),
            "{}",
            last_error()
        );
        assert!(s.is_null());
        let two = [msgs[0], msgs[2]];
        assert_eq!(
            edgelm_apply_chat_template(m.0, two.as_ptr(), 2, true, &mut s),
            EDGELM_ERR_INVALID_UTF8
        );
        assert!(
            last_error().contains("messages[1].content"),
            "{}",
            last_error()
        );
        assert_eq!(
            edgelm_apply_chat_template(m.0, null(), 1, true, &mut s),
            EDGELM_ERR_NULL_ARGUMENT
        );
    }
}

#[test]
fn session_parameters_are_validated() {
    let Some(m) = Model::load() else { return };
    for (params, what) in [
        (greedy(1), "n_ctx"),
        (greedy(u32::MAX), "n_ctx"),
        (
            edgelm_session_params {
                temperature: -1.0,
                ..greedy(64)
            },
            "temperature",
        ),
        (
            edgelm_session_params {
                top_p: f32::NAN,
                ..greedy(64)
            },
            "top_p",
        ),
    ] {
        let mut s = null_mut();
        // SAFETY: live model, params, out pointer.
        let status = unsafe { edgelm_session_new(m.0, &params, &mut s) };
        assert_eq!(status, EDGELM_ERR_INVALID_ARGUMENT, "{what}");
        assert!(s.is_null());
        assert!(last_error().contains(what), "{}", last_error());
    }
}

#[test]
fn generate_streams_the_same_text_as_the_rust_library() {
    let Some(m) = Model::load() else { return };
    let prompt = m.chat_prompt("What is the capital of France?");
    let s = m.session(greedy(256));
    let mut st = Stream::default();
    let out = generate(&s, &prompt, 12, &mut st, None);
    assert_eq!(out.status, EDGELM_OK, "{}", last_error());
    assert_eq!(out.text, st.text, "streamed pieces add up to the result");
    assert_eq!(out.result.n_generated_tokens, st.tokens.len());
    assert!(matches!(
        out.result.finish_reason,
        EDGELM_FINISH_LENGTH | EDGELM_FINISH_EOG
    ));
    assert_eq!(out.result.n_prompt_tokens, prompt.len());
    assert!(!out.text.is_empty());

    let llm = edgelm_runtime::Llm::load(model_path().unwrap()).unwrap();
    let mut session = llm
        .session(256, edgelm_runtime::SamplerConfig::greedy())
        .unwrap();
    let opts = edgelm_runtime::GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let expected = session
        .generate(&prompt, &opts, |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(st.tokens, expected.tokens);
    assert_eq!(out.text, expected.text);

    // The next turn reuses the KV cache of the shared prefix.
    let mut next = prompt.clone();
    next.extend(&st.tokens);
    next.extend(m.tokenize(
        "<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n",
        true,
    ));
    let out2 = generate(&s, &next, 4, &mut Stream::default(), None);
    assert_eq!(out2.status, EDGELM_OK, "{}", last_error());
    assert!(
        out2.result.n_reused_tokens >= prompt.len(),
        "{}",
        out2.result.n_reused_tokens
    );
    assert_eq!(
        out2.result.n_reused_tokens + out2.result.n_prompt_tokens,
        next.len()
    );

    // A reset forgets it.
    // SAFETY: live session.
    assert_eq!(unsafe { edgelm_session_reset(s.0) }, EDGELM_OK);
    let out3 = generate(&s, &prompt, 1, &mut Stream::default(), None);
    assert_eq!(out3.result.n_reused_tokens, 0);
}

#[test]
fn cancel_flag_stops_generation() {
    let Some(m) = Model::load() else { return };
    let prompt = m.chat_prompt("Count from one to one hundred.");
    let s = m.session(greedy(256));

    // Set before the call: nothing is generated, the callback is never called.
    let flag = AtomicI32::new(1);
    let mut st = Stream::default();
    let out = generate(&s, &prompt, 32, &mut st, Some(&flag));
    assert_eq!(out.status, EDGELM_OK, "{}", last_error());
    assert_eq!(out.result.finish_reason, EDGELM_FINISH_CANCELLED);
    assert_eq!(out.result.n_generated_tokens, 0);
    assert!(st.tokens.is_empty() && out.text.is_empty());

    // Set during generation (here by the callback, as another thread or a signal handler
    // would): generation stops right after that token.
    let flag = AtomicI32::new(0);
    let mut st = Stream {
        cancel_after: Some((3, &flag)),
        ..Stream::default()
    };
    let out = generate(&s, &prompt, 32, &mut st, Some(&flag));
    assert_eq!(out.status, EDGELM_OK, "{}", last_error());
    assert_eq!(out.result.finish_reason, EDGELM_FINISH_CANCELLED);
    assert_eq!(out.result.n_generated_tokens, 3);
    assert_eq!(st.tokens.len(), 3);

    // Set from another thread once generation is under way.
    let flag = AtomicI32::new(0);
    let progress = AtomicUsize::new(0);
    let mut st = Stream {
        progress: Some(&progress),
        ..Stream::default()
    };
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            while progress.load(Ordering::Acquire) < 2 {
                std::thread::yield_now();
            }
            flag.store(1, Ordering::Relaxed);
        });
        generate(&s, &prompt, 200, &mut st, Some(&flag))
    });
    assert_eq!(out.status, EDGELM_OK, "{}", last_error());
    assert_eq!(out.result.finish_reason, EDGELM_FINISH_CANCELLED);
    assert!(
        (2..200).contains(&out.result.n_generated_tokens),
        "{}",
        out.result.n_generated_tokens
    );
}

#[test]
fn callback_returning_nonzero_stops_generation() {
    let Some(m) = Model::load() else { return };
    let prompt = m.chat_prompt("Count from one to one hundred.");
    let s = m.session(greedy(256));
    let mut st = Stream {
        stop_after: Some(2),
        ..Stream::default()
    };
    let out = generate(&s, &prompt, 32, &mut st, None);
    assert_eq!(out.status, EDGELM_OK, "{}", last_error());
    assert_eq!(out.result.finish_reason, EDGELM_FINISH_CANCELLED);
    assert_eq!(out.result.n_generated_tokens, 2);
    assert_eq!(st.tokens.len(), 2);
    assert_eq!(out.text, st.text);
}

#[test]
fn bad_prompts_and_options_are_errors() {
    let Some(m) = Model::load() else { return };
    let s = m.session(greedy(16));
    let mut st = Stream::default();
    assert_eq!(
        generate(&s, &[], 4, &mut st, None).status,
        EDGELM_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("empty"), "{}", last_error());
    assert_eq!(
        generate(&s, &[u32::MAX], 4, &mut st, None).status,
        EDGELM_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("outside the vocabulary"),
        "{}",
        last_error()
    );
    let long = m.chat_prompt("Tell me a long story about a dragon and a knight, please.");
    let out = generate(&s, &long, 4, &mut st, None);
    assert_eq!(out.status, EDGELM_ERR_CONTEXT_LENGTH, "{}", last_error());
    assert!(out.text.is_empty() && out.result.n_generated_tokens == 0);
    assert!(st.tokens.is_empty(), "no callback on failure");

    let bad = b"\xff\0";
    let stops = [c"\n".as_ptr(), bad.as_ptr().cast::<c_char>()];
    let params = edgelm_generate_params {
        stop: stops.as_ptr(),
        n_stop: 2,
        ..edgelm_generate_params_default()
    };
    let t = m.tokenize("Hi", false);
    // SAFETY: live session, ids, params with 2 stop strings, no callback, no flag, no out.
    let status = unsafe {
        edgelm_generate(
            s.0,
            t.as_ptr(),
            t.len(),
            &params,
            None,
            null_mut(),
            null(),
            null_mut(),
        )
    };
    assert_eq!(status, EDGELM_ERR_INVALID_UTF8);
    assert!(last_error().contains("params.stop[1]"), "{}", last_error());
    let params = edgelm_generate_params {
        stop: null(),
        n_stop: 1,
        ..params
    };
    // SAFETY: as above, with a null stop array.
    let status = unsafe {
        edgelm_generate(
            s.0,
            t.as_ptr(),
            t.len(),
            &params,
            None,
            null_mut(),
            null(),
            null_mut(),
        )
    };
    assert_eq!(status, EDGELM_ERR_NULL_ARGUMENT);
    // SAFETY: null prompt with a non-zero count.
    let status =
        unsafe { edgelm_generate(s.0, null(), 3, null(), None, null_mut(), null(), null_mut()) };
    assert_eq!(status, EDGELM_ERR_NULL_ARGUMENT);
}

#[test]
fn sessions_outlive_their_model_and_run_in_parallel() {
    let Some(m) = Model::load() else { return };
    let prompt = m.chat_prompt("Name a colour.");
    let a = m.session(greedy(128));
    let b = m.session(greedy(128));
    drop(m);
    struct Shared(Session);
    // SAFETY: each session is used by exactly one thread, as the header allows.
    unsafe impl Send for Shared {}
    let (a, b) = (Shared(a), Shared(b));
    let run = |s: Shared| {
        let mut st = Stream::default();
        let out = generate(&s.0, &prompt, 6, &mut st, None);
        assert_eq!(out.status, EDGELM_OK);
        out.text
    };
    let (ta, tb) = std::thread::scope(|scope| {
        let ha = scope.spawn(|| run(a));
        let hb = scope.spawn(|| run(b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert!(!ta.is_empty());
    assert_eq!(ta, tb, "greedy replies agree across parallel sessions");
}
