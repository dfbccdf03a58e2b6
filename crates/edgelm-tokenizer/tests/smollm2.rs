//! Acceptance tests on the real SmolLM2 model: ids identical to llama.cpp's (fixtures written
//! by scripts/gen_tokenizer_fixtures.py), round trips, streaming, chat template.

mod common;

use std::time::Instant;

use common::{first_diff, fixture, read_u16_ids, shared_data, smollm2_model};
use edgelm_gguf::GgufFile;
use edgelm_tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn load() -> Option<(GgufFile, Tokenizer, Value)> {
    let path = smollm2_model()?;
    let file = GgufFile::open(&path).expect("model opens");
    let tok = Tokenizer::from_gguf(file.metadata()).expect("tokenizer builds");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2_meta.json")).unwrap())
            .unwrap();
    Some((file, tok, meta))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn special_tokens_match_llama_cpp() {
    let Some((_file, tok, meta)) = load() else {
        return;
    };
    assert_eq!(tok.n_vocab() as u64, meta["n_vocab"].as_u64().unwrap());
    assert_eq!(
        tok.bos().map(i64::from),
        meta["bos"].as_i64().filter(|&x| x >= 0)
    );
    assert_eq!(
        tok.eos().map(i64::from),
        meta["eos"].as_i64().filter(|&x| x >= 0)
    );
    // llama.cpp picks EOT among `<|endoftext|>` and `<|im_end|>` by libstdc++ hash order (it
    // gets `<|endoftext|>`); we pick `<|im_end|>`, the token that ends a turn. Both end generation.
    let llama_eot = meta["eot"].as_u64().unwrap() as u32;
    assert_eq!(tok.token_text(llama_eot), Some("<|endoftext|>"));
    assert_eq!(tok.eot(), tok.token_id("<|im_end|>"));
    assert!(tok.is_eog(llama_eot) && tok.is_eog(tok.eot().unwrap()));
    assert_eq!(tok.add_bos(), meta["add_bos"].as_bool().unwrap());
    assert_eq!(tok.add_eos(), meta["add_eos"].as_bool().unwrap());
    assert_eq!(tok.eog_ids(), ids(&meta["eog"]));
    assert!(tok.is_eog(tok.token_id("<|im_end|>").unwrap()));
    assert!(!tok.is_eog(tok.token_id("<|im_start|>").unwrap()));
}

#[test]
fn tricky_strings_match_llama_cpp() {
    let Some((_file, tok, meta)) = load() else {
        return;
    };
    let mut failures = Vec::new();
    for case in meta["tricky"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        for (parse_special, key) in [(false, "ids"), (true, "ids_parse_special")] {
            let got = tok.encode(text, true, parse_special).unwrap();
            let want = ids(&case[key]);
            if got != want {
                failures.push(format!(
                    "{text:?} parse_special={parse_special}: got {got:?}, llama.cpp {want:?}"
                ));
            }
            assert_eq!(
                tok.decode(&got, false),
                text,
                "round trip of {text:?} (parse_special={parse_special})"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_corpus(name: &str, file_name: &str) -> Option<(Tokenizer, String, Vec<u32>)> {
    let (_file, tok, meta) = load()?;
    let path = shared_data(file_name)?;
    let bytes = std::fs::read(&path).unwrap();
    let info = &meta["data"][name];
    let sha = format!("{:x}", Sha256::digest(&bytes));
    assert_eq!(
        sha,
        info["sha256"].as_str().unwrap(),
        "{file_name} differs from the file the fixture was made from"
    );
    let text = String::from_utf8(bytes).unwrap();
    let want = read_u16_ids(&fixture(&format!("smollm2_{name}.u16")));
    assert_eq!(want.len() as u64, info["n_tokens"].as_u64().unwrap());

    let t0 = Instant::now();
    let got = tok.encode(&text, true, false).unwrap();
    eprintln!(
        "{name}: {} bytes -> {} tokens in {:.3} s",
        text.len(),
        got.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some((i, ours, theirs)) = first_diff(&got, &want) {
        panic!(
            "{name}: first difference at token {i} of {}/{}: ours {ours:?}, llama.cpp {theirs:?}",
            got.len(),
            want.len()
        );
    }
    assert_eq!(
        tok.decode(&got, false),
        text,
        "{name}: decode(encode(x)) != x"
    );
    Some((tok, text, got))
}

#[test]
fn wikitext2_test_matches_llama_cpp() {
    check_corpus("wikitext2_test", "wikitext-2-raw-test.txt");
}

#[test]
fn tinyshakespeare_matches_llama_cpp_and_streams() {
    let Some((tok, text, ids)) = check_corpus("tinyshakespeare", "tinyshakespeare.txt") else {
        return;
    };
    let mut stream = StreamDecoder::new(&tok);
    let mut streamed = String::new();
    for &id in &ids {
        let chunk = stream.push(id);
        assert!(
            !chunk.contains('\u{FFFD}'),
            "stream emitted a replacement character"
        );
        streamed.push_str(&chunk);
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, tok.decode(&ids, false));
    assert_eq!(streamed, text);
}

#[test]
fn multibyte_character_split_across_tokens_streams_whole() {
    let Some((_file, tok, _meta)) = load() else {
        return;
    };
    // a rare CJK character this vocabulary spells with several byte tokens
    let text = "a\u{26C6}b \u{1F999}";
    let ids = tok.encode(text, false, false).unwrap();
    let mut stream = StreamDecoder::new(&tok);
    let mut chunks = Vec::new();
    for &id in &ids {
        chunks.push(stream.push(id));
    }
    chunks.push(stream.finish());
    assert!(
        ids.len() > text.chars().count(),
        "expected byte-level pieces, got {ids:?}"
    );
    assert!(
        chunks.iter().any(String::is_empty),
        "some token must complete no character: {chunks:?}"
    );
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    assert_eq!(chunks.concat(), text);
    // a lone piece of a character is held back, and replaced only at the end
    let partial: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| std::str::from_utf8(tok.token_to_piece(id)).is_err())
        .collect();
    assert!(!partial.is_empty());
    let mut stream = StreamDecoder::new(&tok);
    assert_eq!(stream.push(partial[0]), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}

#[test]
fn control_tokens_are_hidden_unless_asked() {
    let Some((_file, tok, _meta)) = load() else {
        return;
    };
    let ids = tok
        .encode("<|im_start|>user\nhi<|im_end|>", false, true)
        .unwrap();
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert_eq!(tok.decode(&ids, true), "user\nhi");
    assert_eq!(tok.decode(&ids, false), "<|im_start|>user\nhi<|im_end|>");
    let mut s = StreamDecoder::new(&tok);
    let hidden: String = ids.iter().map(|&id| s.push(id)).collect();
    assert_eq!(hidden, "user\nhi");
    let mut s = StreamDecoder::with_special(&tok, true);
    let shown: String = ids.iter().map(|&id| s.push(id)).collect();
    assert_eq!(shown, "<|im_start|>user\nhi<|im_end|>");
}

#[test]
fn chat_template_matches_llama_cpp_python() {
    let Some((file, tok, meta)) = load() else {
        return;
    };
    let template = ChatTemplate::from_gguf(file.metadata(), &tok)
        .unwrap()
        .expect("SmolLM2 has a chat template");
    assert_eq!(template.source(), meta["chat_template"].as_str().unwrap());
    for case in meta["chat"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = template.render(&messages, agp).unwrap();
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "messages {messages:?}"
        );
        assert_eq!(
            tok.encode(&rendered, true, true).unwrap(),
            ids(&case["ids_parse_special"])
        );
    }
    let hello = template
        .render(&[ChatMessage::new("user", "Hello")], true)
        .unwrap();
    assert!(hello.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"));
    assert!(hello.ends_with("<|im_start|>assistant\n"));
}
