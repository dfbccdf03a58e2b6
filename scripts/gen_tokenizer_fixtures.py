#!/usr/bin/env python3
"""Generate the tokenizer fixtures in crates/edgelm-tokenizer/tests/data/ with llama.cpp
(through llama-cpp-python). Run with the reference venv (scripts/ref-venv.sh):

    ~/.cache/edgelm-ref/venv/bin/python scripts/gen_tokenizer_fixtures.py

Writes:
  smollm2_meta.json           versions, special ids, EOG set, data sha256s, token counts,
                              tricky strings (ids with parse_special false/true), chat rendering
  smollm2_wikitext2_test.u16  ids of /work/shared/data/wikitext-2-raw-test.txt (u16 LE)
  smollm2_tinyshakespeare.u16 ids of /work/shared/data/tinyshakespeare.txt (u16 LE)
  llama_vocab_<name>.json     llama.cpp's ggml-vocab-<name>.gguf test inputs and llama.cpp's ids
All texts are tokenized as llama.cpp tokenizes a prompt: llama_tokenize(add_special=True,
parse_special=False) unless noted ("parse_special" entries; the vocab tests use add_special=False,
as llama.cpp's tests/test-tokenizer-0 does).
"""
import hashlib
import json
import os
import struct
import sys

import jinja2
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "edgelm-tokenizer", "tests", "data")
MODEL = os.path.expanduser("~/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
LLAMA_MODELS = os.path.expanduser("~/.cache/edgelm-ref/llama.cpp/src/vendor/llama.cpp/models")
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2", "starcoder", "refact", "mpt", "falcon",
          "command-r", "phi-3"]

TRICKY = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " \n \n", "\r\n", "\r\n\r\n",
    "Hello world", " Hello world", "Hello World", " Hello World!", "Hello, world!",
    "12345678", "1234567890 123 4 56", "3.14159", "1,000,000", "x=12+34*56",
    "it's", "they'll", "we've", "I'm", "you'd", "she's", "IT'S", "THEY'LL", "don't 's 'll 're 've 'm 'd 't",
    "  leading spaces", "trailing spaces   ", "multiple    spaces   inside", "tab\tseparated\tvalues",
    "line1\nline2\n\nline4", "mixed \t\n whitespace \n\t ",
    "café naïve résumé Ångström Äpfel", "Überprüfung straße", "ñandú pingüino",
    "Привет, мир! нещо на Български", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया",
    "你好，世界！", "こんにちは世界", "안녕하세요 세계", "中文和English混合123",
    "emoji 🦙🚀👍🏽 👨‍👩‍👧‍👦 ❤️", "🦙.cpp", "math ∑∫√∞ ≠ ≤ ≥ ±", "arrows ← → ↑ ↓", "currency $ € £ ¥ ₹",
    "non-breaking\u00a0space", "zero\u200bwidth", "ideographic\u3000space", "em\u2003space",
    "combining e\u0301 a\u0308", "full-width ＡＢＣ１２３", "<s> </s> <unk>", "<|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "print('hello')\n    return x ** 2  # comment", "def f(a, b):\n\treturn a+b\n", "{\"key\": [1, 2, 3]}",
    "https://example.com/path?q=1&r=2", "user@example.com", "C:\\Users\\test", "--flag=value", "a...b!!!c???",
    "((()))[[[]]]{{{}}}", "'quoted' \"double\" `back`", "Mr. O'Neil's cat", "e.g. i.e. etc.",
]


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load(path):
    return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)


def tok(llm, text, add_special=True, parse_special=False):
    return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)


def write_u16(path, ids):
    assert max(ids) < 65536
    with open(path, "wb") as f:
        f.write(struct.pack(f"<{len(ids)}H", *ids))


def main():
    os.makedirs(OUT, exist_ok=True)
    llm = load(MODEL)
    model = llm._model
    vocab = model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    eog = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]

    meta = {
        "generator": "scripts/gen_tokenizer_fixtures.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "jinja2_version": jinja2.__version__,
        "model_file": os.path.basename(MODEL),
        "model_sha256": sha256_file(MODEL),
        "n_vocab": n_vocab,
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": eog,
        "tricky": [],
        "data": {},
    }
    for s in TRICKY:
        meta["tricky"].append({
            "text": s,
            "ids": tok(llm, s, True, False),
            "ids_parse_special": tok(llm, s, True, True),
        })

    for name, fname in [("wikitext2_test", "wikitext-2-raw-test.txt"), ("tinyshakespeare", "tinyshakespeare.txt")]:
        path = os.path.join(SHARED, fname)
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        ids = tok(llm, text, True, False)
        write_u16(os.path.join(OUT, f"smollm2_{name}.u16"), ids)
        meta["data"][name] = {"file": fname, "sha256": sha256_file(path), "n_tokens": len(ids),
                              "ids_sha256": hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest()}
        print(f"{name}: {len(ids)} tokens", file=sys.stderr)

    # chat template, rendered as llama-cpp-python renders it (jinja2, trim/lstrip blocks)
    template = llama_cpp.llama_model_chat_template(model.model, None).decode("utf-8")
    bos_text = llama_cpp.llama_vocab_get_text(vocab, meta["bos"]).decode("utf-8")
    eos_text = llama_cpp.llama_vocab_get_text(vocab, meta["eos"]).decode("utf-8")
    chats = []
    for messages, agp in [
        ([{"role": "user", "content": "Hello"}], True),
        ([{"role": "user", "content": "Hello"}], False),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "  Tell me a joke.\n"}], True),
    ]:
        fmt = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text,
                                  add_generation_prompt=agp)
        prompt = fmt(messages=messages).prompt
        chats.append({"messages": messages, "add_generation_prompt": agp, "rendered": prompt,
                      "ids_parse_special": tok(llm, prompt, True, True)})
    meta["chat_template"] = template
    meta["chat"] = chats

    with open(os.path.join(OUT, "smollm2_meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)

    # llama.cpp's own vocab test files
    sep = "\n__ggml_vocab_test__\n"
    for name in VOCABS:
        path = os.path.join(LLAMA_MODELS, f"ggml-vocab-{name}.gguf")
        if not os.path.exists(path + ".inp"):
            print(f"skipping {name}: no {path}.inp", file=sys.stderr)
            continue
        with open(path + ".inp", "rb") as f:
            raw = f.read().decode("utf-8")
        inputs = raw.split(sep)
        if raw.endswith(sep.rstrip("\n")):
            pass
        v = load(path)
        vv = v._model.vocab
        nv = llama_cpp.llama_vocab_n_tokens(vv)
        out = {
            "vocab_file": os.path.basename(path),
            "vocab_sha256": sha256_file(path),
            "llama_cpp_python_version": llama_cpp.__version__,
            "bos": llama_cpp.llama_vocab_bos(vv),
            "eos": llama_cpp.llama_vocab_eos(vv),
            "eot": llama_cpp.llama_vocab_eot(vv),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vv)),
            "eog": [i for i in range(nv) if llama_cpp.llama_vocab_is_eog(vv, i)],
            "cases": [],
        }
        for s in inputs + TRICKY:
            out["cases"].append({"text": s, "ids": tok(v, s, False, False),
                                 "ids_add_special": tok(v, s, True, False),
                                 "ids_parse_special": tok(v, s, True, True)})
        with open(os.path.join(OUT, f"llama_vocab_{name}.json"), "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False)
        del v
        print(f"{name}: {len(out['cases'])} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
