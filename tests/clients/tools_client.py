"""A tool-calling round trip with the official `openai` and `ollama` Python packages against an
echo model whose chat template renders tools (tests/src/lib.rs `TOOL_TEMPLATE`): the echo answers
with the user's words, so a user turn holding a `<tool_call>` block scripts the model's call. Run by
tests/tests/e2e/clients.rs; only the protocol is checked, never what a model means."""

import json
import sys

import ollama
import openai

from r1d_socket import openai_client, ollama_client

socket = sys.argv[1]
client = openai_client(socket)
MODEL = client.models.list().data[0].id
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'

# The call, non-streamed: tool_calls with a JSON arguments string, finish_reason tool_calls.
messages = [{"role": "user", "content": CALL}]
r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="auto")
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
(call,) = choice.message.tool_calls
assert call.type == "function" and call.function.name == "get_weather", call
assert json.loads(call.function.arguments) == {"city": "Paris"}, call

# Streamed: the client accumulates the delta.tool_calls chunks into the same call.
calls, finish = {}, None
for chunk in client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, stream=True):
    for c in chunk.choices:
        finish = c.finish_reason or finish
        for d in c.delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
assert finish == "tool_calls", finish
assert [c["name"] for c in calls.values()] == ["get_weather"], calls
assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}, calls

# The result goes back as a tool message (with the assistant's call, as the client returned it);
# the next answer is text (the echo repeats the last user turn, which asks for no tool now).
messages = [
    {"role": "user", "content": "weather in Paris?"},
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"},
]
r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
assert r.choices[0].finish_reason == "stop", r
assert r.choices[0].message.content == "weather in Paris?", r
assert not r.choices[0].message.tool_calls, r

# A forced call is not implemented: refused by name, not ignored.
try:
    client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="required")
    raise AssertionError("tool_choice required was accepted")
except openai.BadRequestError as e:
    assert e.param == "tool_choice", e

# Ollama: the same call in Ollama's shape, and the capability in show().
oc = ollama_client(socket)
r = oc.chat(model=MODEL, messages=[{"role": "user", "content": CALL}], tools=TOOLS, stream=False)
(tc,) = r.message.tool_calls
assert tc.function.name == "get_weather" and tc.function.arguments == {"city": "Paris"}, r
r = oc.chat(model=MODEL, tools=TOOLS, stream=False, messages=[
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
])
assert r.message.content == "weather in Paris?" and not r.message.tool_calls, r
assert "tools" in oc.show(MODEL).capabilities

print("all checks passed")
