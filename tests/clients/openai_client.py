"""Drives r1d with the official `openai` Python package over the Unix socket, unchanged but for
the transport. Run by tests/tests/e2e/clients.rs against an echo model named like DeepSeek-R1
that answers with the user's words: "hmm let me see</think>The answer" → reasoning + content.
Exits non-zero (an assertion) when something differs from what an OpenAI client expects."""

import sys

import openai

from r1d_socket import openai_client

# argv[1]: the Unix socket, or r1d's TCP address as a URL (http://127.0.0.1:PORT), reached as
# any OpenAI client would (base_url); argv[2]: the API key the TCP listener asks for, if any.
target = sys.argv[1]
key = sys.argv[2] if len(sys.argv) > 2 else None
if target.startswith("http://"):
    client = openai.OpenAI(base_url=target + "/v1", api_key=key or "not-needed", max_retries=0)
    if key:
        wrong = openai.OpenAI(base_url=target + "/v1", api_key=key + "x", max_retries=0)
        try:
            wrong.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.code == "invalid_api_key", e
            assert key not in str(e), e
else:
    client = openai_client(target)
THINKER = "hmm let me see</think>The answer"
# The id /v1/models lists is the name to ask for (issue 17); the echo model is loaded from outside
# the store, so it is listed by its file stem.
MODEL = "test"

models = client.models.list()
assert [m.id for m in models.data] == [MODEL], models
# Retrieve: the listed id (and any name r1d accepts for the model, :latest too) gives its entry.
for name in (MODEL, MODEL + ":latest"):
    assert client.models.retrieve(name).id == MODEL
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was retrieved")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

# Non-streamed chat: reasoning in reasoning_content (an extra field the client keeps).
r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": THINKER}])
assert r.choices[0].message.content == "The answer", r
assert r.choices[0].message.reasoning_content == "hmm let me see", r
assert r.choices[0].finish_reason == "stop"
assert r.usage.completion_tokens == 5 and r.usage.total_tokens == r.usage.prompt_tokens + 5, r.usage

# Streamed chat with usage.
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": THINKER}],
    stream=True,
    stream_options={"include_usage": True},
)
content, reasoning, finish, usage = "", "", None, None
for chunk in stream:
    if chunk.usage is not None and not chunk.choices:
        usage = chunk.usage
    for c in chunk.choices:
        content += c.delta.content or ""
        reasoning += getattr(c.delta, "reasoning_content", None) or ""
        finish = c.finish_reason or finish
assert (content, reasoning, finish) == ("The answer", "hmm let me see", "stop"), (content, reasoning, finish)
assert usage is not None and usage.completion_tokens == 5, usage

# Legacy completions: a raw prompt.
c = client.completions.create(model=MODEL, prompt="<|user|>one two three", max_tokens=2)
assert c.choices[0].text == "one two" and c.choices[0].finish_reason == "length", c

# Error paths raise the client's own exception classes with the server's message.
try:
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found" and "gpt-4o" in e.message, e
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=3)
    raise AssertionError("temperature 3 accepted")
except openai.BadRequestError as e:
    assert e.param == "temperature", e
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 3000}])
    raise AssertionError("prompt over the context accepted")
except openai.BadRequestError as e:
    assert e.code == "context_length_exceeded" and "2048 tokens" in e.message, e

# And the next request is served.
r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": THINKER}])
assert r.choices[0].message.content == "The answer"
print("openai client: all checks passed")
