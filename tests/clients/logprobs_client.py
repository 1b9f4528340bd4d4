"""Log probabilities with the official `openai` Python package against a real model
(SmolLM2-135M-Instruct on the llama.cpp plugin): `logprobs` / `top_logprobs` on chat completions
(non-streamed and streamed, read through the package's typed objects) and `logprobs` on text
completions, Ollama's `logprobs` with the `ollama` package, and the refusals of values outside OpenAI's ranges. Run by
tests/tests/e2e/clients.rs. Nothing here judges what the model says: only that the entries are
the package's types, cover the answer's text token by token and are greedy's own at temperature 0
(the chosen token is the most likely)."""

import math
import sys

import ollama
import openai

from r1d_socket import openai_client, ollama_client

# argv[1]: r1d's Unix socket; argv[2]: the name r1d lists the model by.
socket, model = sys.argv[1], sys.argv[2]
client = openai_client(socket)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours."},
]


def check_greedy(entries, top):
    for e in entries:
        assert e.logprob <= 0 and math.isfinite(e.logprob), e
        assert len(e.top_logprobs) == top, e
        best = e.top_logprobs[0]
        assert (best.token, best.logprob, best.bytes) == (e.token, e.logprob, e.bytes), e
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token, e


r = client.chat.completions.create(
    model=model, messages=MESSAGES, temperature=0, max_tokens=20, logprobs=True, top_logprobs=3
)
choice = r.choices[0]
entries = choice.logprobs.content
assert len(entries) == r.usage.completion_tokens, (len(entries), r.usage)
assert b"".join(bytes(e.bytes) for e in entries).decode() == choice.message.content
check_greedy(entries, 3)

# Streamed: each chunk's entries are those of its text.
streamed = []
text = ""
for chunk in client.chat.completions.create(
    model=model, messages=MESSAGES, temperature=0, max_tokens=20, logprobs=True, top_logprobs=3,
    stream=True,
):
    for c in chunk.choices:
        text += c.delta.content or ""
        if c.logprobs is not None and c.logprobs.content:
            streamed.extend(c.logprobs.content)
assert text == choice.message.content, (text, choice.message.content)
assert [e.token for e in streamed] == [e.token for e in entries]

# logprobs without top_logprobs: the chosen token's only.
r = client.chat.completions.create(
    model=model, messages=MESSAGES, temperature=0, max_tokens=5, logprobs=True
)
assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)
# Not asked: no logprobs object.
r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
assert r.choices[0].logprobs is None

# Text completions: the legacy parallel arrays.
c = client.completions.create(
    model=model, prompt="The sky is", temperature=0, max_tokens=6, logprobs=2
)
lp = c.choices[0].logprobs
assert "".join(lp.tokens) == c.choices[0].text
assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
    assert 1 <= len(top) <= 2 and top[token] == logprob, (token, logprob, top)

# Out of range: refused by name.
for kwargs, param in (
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
):
    try:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, **kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == param, e.body
try:
    client.completions.create(model=model, prompt="x", max_tokens=3, logprobs=6)
    raise AssertionError("logprobs=6 was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "logprobs", e.body

# Ollama (its `logprobs` / `top_logprobs`, Ollama >= 0.12.11): chat, streamed and not, and
# generate; the package's own `Logprob` objects.
oc = ollama_client(socket)
r = oc.chat(model=model, messages=MESSAGES, options={"temperature": 0, "num_predict": 12},
            logprobs=True, top_logprobs=2)
assert "".join(e.token for e in r.logprobs) == r.message.content, (r.logprobs, r.message)
assert len(r.logprobs) == r.eval_count
for e in r.logprobs:
    assert len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token, e
    assert e.top_logprobs[0].logprob == e.logprob <= 0, e
streamed = []
for part in oc.chat(model=model, messages=MESSAGES, options={"temperature": 0, "num_predict": 12},
                    logprobs=True, top_logprobs=2, stream=True):
    streamed.extend(part.logprobs or [])
assert [e.token for e in streamed] == [e.token for e in r.logprobs]
g = oc.generate(model=model, prompt="The sky is", raw=True,
                options={"temperature": 0, "num_predict": 5}, logprobs=True)
assert "".join(e.token for e in g.logprobs) == g.response, (g.logprobs, g.response)
try:
    oc.chat(model=model, messages=MESSAGES, top_logprobs=3)
    raise AssertionError("top_logprobs without logprobs was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "top_logprobs" in e.error, e

print("all checks passed")
