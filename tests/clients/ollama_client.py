"""Drives r1d with the official `ollama` Python package over the Unix socket (see
openai_client.py for the model it expects)."""

import os
import sys

import ollama

from r1d_socket import ollama_client

# argv[1]: the Unix socket, or r1d's TCP address (127.0.0.1:PORT), reached as any Ollama client
# would (OLLAMA_HOST); argv[2]: the API key the TCP listener asks for, if any.
target = sys.argv[1]
key = sys.argv[2] if len(sys.argv) > 2 else None
if target.startswith("/"):
    client = ollama_client(target)
else:
    os.environ["OLLAMA_HOST"] = target
    if key:
        try:
            ollama.Client().list()
            raise AssertionError("a request without the key was accepted")
        except ollama.ResponseError as e:
            assert e.status_code == 401 and "API key" in e.error, e
    client = ollama.Client(headers={"Authorization": f"Bearer {key}"} if key else None)
THINKER = "hmm let me see</think>The answer"
# The name r1d lists is the name to ask for (issue 17: list() → chat() with the listed name); the
# echo model is loaded from outside the store, so it is listed by its file stem.
MODEL = client.list().models[0].model
assert MODEL == "test", MODEL

r = client.chat(model=MODEL, messages=[{"role": "user", "content": THINKER}], think=True)
assert r.message.content == "The answer" and r.message.thinking == "hmm let me see", r
assert r.done and r.done_reason == "stop" and r.eval_count == 5, r

content, thinking, last = "", "", None
for part in client.chat(model=MODEL, messages=[{"role": "user", "content": THINKER}], think=True, stream=True):
    content += part.message.content or ""
    thinking += part.message.thinking or ""
    last = part
assert (content, thinking) == ("The answer", "hmm let me see"), (content, thinking)
assert last.done and last.prompt_eval_count > 0, last

g = client.generate(model=MODEL, prompt="one two three", think=True, options={"num_predict": 2})
assert g.thinking == "one two" and g.done_reason == "length", g

tags = client.list()
assert [m.model for m in tags.models] == [MODEL], tags
assert tags.models[0].details.quantization_level == "echo", tags

show = client.show(MODEL)
assert "thinking" in show.capabilities, show
assert "temperature 0.6" in show.parameters, show

ps = client.ps()
assert ps.models[0].model == MODEL and ps.models[0].context_length == 2048, ps

try:
    client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except ollama.ResponseError as e:
    assert e.status_code == 404 and "llama3" in e.error, e

print("ollama client: all checks passed")
