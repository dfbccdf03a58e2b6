"""Drives a running `edgelm serve` with the official `openai` Python client.

Usage: openai_client.py BASE_URL API_KEY MODEL_ID SERVER_PID

Checks streaming and non-streaming chat, completions, JSON mode, usage counts, and every error
case (400 malformed JSON / wrong types / context_length_exceeded, 401, 404, 413), making sure
the server keeps serving after each; ends by sending SIGTERM during a stream, which must end
cleanly. Exits non-zero (with a traceback) on the first failed check.
"""

import json
import os
import signal
import sys

import httpx
import openai

base, key, model, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
raw = httpx.Client(base_url=base, timeout=120)
AUTH = {"Authorization": f"Bearer {key}"}
MSG = [{"role": "user", "content": "Name three colors."}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok  {what}", flush=True)


def still_serves():
    r = client.chat.completions.create(model=model, messages=MSG, max_tokens=3, temperature=0)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens <= 3


def expect_error(exc_type, status, code, fn, what):
    try:
        fn()
    except exc_type as e:
        check(e.status_code == status, f"{what}: status {e.status_code} == {status}")
        body = e.body if isinstance(e.body, dict) else {}
        if code is not None:
            check(body.get("code") == code, f"{what}: code {body.get('code')!r} == {code!r}")
        check(isinstance(body.get("message"), str), f"{what}: OpenAI error shape")
    else:
        raise AssertionError(f"{what}: no error raised")
    still_serves()


# Models.
ids = [m.id for m in client.models.list()]
check(ids == [model], f"models.list() == [{model!r}]")

# Non-streaming chat.
r = client.chat.completions.create(model=model, messages=MSG, max_tokens=16, temperature=0,
                                   seed=3)
text = r.choices[0].message.content
check(r.object == "chat.completion" and text, "chat completion has content")
check(r.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0, "chat usage")
check(r.usage.completion_tokens <= 16, "max_tokens honoured")
r2 = client.chat.completions.create(model=model, messages=MSG, max_completion_tokens=16,
                                    temperature=0)
check(r2.choices[0].message.content == text, "greedy is deterministic; max_completion_tokens")

# Streaming chat with usage.
stream = client.chat.completions.create(model=model, messages=MSG, max_tokens=16, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
parts, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("".join(parts) == text, "streamed deltas == non-streamed text")
check(finish in ("stop", "length"), "stream finish_reason")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens,
      "stream_options.include_usage")

# Stop strings and sampling options.
r = client.chat.completions.create(model=model, messages=[
    {"role": "system", "content": "You count."},
    {"role": "user", "content": "Count from 1 to 20, separated by commas."}],
    max_tokens=60, temperature=0.7, top_p=0.9, seed=11, stop=["7"])
check("7" not in r.choices[0].message.content, "stop string not in the output")
r_again = client.chat.completions.create(model=model, messages=[
    {"role": "system", "content": "You count."},
    {"role": "user", "content": "Count from 1 to 20, separated by commas."}],
    max_tokens=60, temperature=0.7, top_p=0.9, seed=11, stop=["7"])
check(r.choices[0].message.content == r_again.choices[0].message.content, "same seed, same text")

# Completions, non-streaming and streaming.
c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12,
                              temperature=0)
check(c.object == "text_completion" and c.choices[0].text, "completion has text")
check(c.usage.completion_tokens <= 12, "completion usage")
pieces = [ch.choices[0].text for ch in client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True)
    if ch.choices]
check("".join(pieces) == c.choices[0].text, "streamed completion == non-streamed")

# JSON mode.
r = client.chat.completions.create(
    model=model, max_tokens=80, temperature=0.8, seed=5,
    messages=[{"role": "user", "content": "Describe a dog as JSON with name and age."}],
    response_format={"type": "json_object"})
obj = json.loads(r.choices[0].message.content)
check(isinstance(obj, dict), f"json_object output parses: {r.choices[0].message.content!r}")

# Prompt cache: a second turn reuses the first turn's prefix.
conv = [{"role": "system", "content": "You are terse. " * 10},
        {"role": "user", "content": "Say hello."}]
a = client.chat.completions.create(model=model, messages=conv, max_tokens=8, temperature=0)
conv += [{"role": "assistant", "content": a.choices[0].message.content},
         {"role": "user", "content": "Say goodbye."}]
b = client.chat.completions.create(model=model, messages=conv, max_tokens=8, temperature=0)
cached = b.usage.prompt_tokens_details.cached_tokens
check(cached >= a.usage.prompt_tokens, f"second turn reused {cached} cached prompt tokens")

# Errors.
expect_error(openai.BadRequestError, 400, None,
             lambda: client.chat.completions.create(model=model, messages=MSG,
                                                    max_tokens="ten"),
             "wrong type (max_tokens='ten')")
expect_error(openai.BadRequestError, 400, None,
             lambda: client.chat.completions.create(model=model, messages=MSG, temperature=9),
             "out-of-range temperature")
expect_error(openai.BadRequestError, 400, "context_length_exceeded",
             lambda: client.chat.completions.create(
                 model=model, messages=[{"role": "user", "content": "hello " * 3000}]),
             "prompt longer than the context")
expect_error(openai.NotFoundError, 404, "model_not_found",
             lambda: client.chat.completions.create(model="gpt-9", messages=MSG),
             "unknown model")
bad_key = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
expect_error(openai.AuthenticationError, 401, "invalid_api_key",
             lambda: bad_key.chat.completions.create(model=model, messages=MSG),
             "wrong API key")
expect_error(openai.APIStatusError, 413, None,
             lambda: client.completions.create(model=model, prompt="a" * (3 << 20)),
             "oversize body")

# Malformed JSON (the client always sends valid JSON): raw HTTP.
resp = raw.post("/v1/chat/completions", content=b'{"messages": [', headers={
    **AUTH, "Content-Type": "application/json"})
check(resp.status_code == 400 and "message" in resp.json()["error"], "malformed JSON -> 400")
resp = raw.post("/v1/chat/completions", content=b"x" * 100, headers=AUTH)
check(resp.status_code == 400, "garbage body -> 400")
still_serves()
check(raw.get("/health").json() == {"status": "ok"}, "health")
metrics = raw.get("/metrics").text
check("edgelm_time_to_first_token_seconds_bucket" in metrics, "metrics: TTFT histogram")
check("edgelm_queue_depth" in metrics, "metrics: queue depth")

# Graceful shutdown: SIGTERM during a stream; the stream still ends cleanly.
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Write a long story about a ship."}],
    max_tokens=300, temperature=0.8, stream=True)
n, finish, sent = 0, None, False
for chunk in stream:
    for c in chunk.choices:
        if c.delta.content:
            n += 1
            if not sent and n >= 3:
                os.kill(pid, signal.SIGTERM)
                sent = True
        if c.finish_reason:
            finish = c.finish_reason
check(sent and finish in ("stop", "length"), f"stream ended cleanly after SIGTERM ({finish})")
print("all openai-client checks passed")
