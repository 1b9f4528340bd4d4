"""Drives r1d's POST /v1/responses with the official `openai` Python package
(`client.responses.create`), streamed and not, over the Unix socket. Run by
tests/tests/e2e/clients.rs against an echo model named like DeepSeek-R1 that answers with the
user's words: "hmm let me see</think>The answer" → reasoning "hmm let me see", text "The answer".
Exits non-zero (an assertion) when something differs from what the client expects."""

import sys

import openai

from r1d_socket import openai_client

client = openai_client(sys.argv[1])
THINKER = "hmm let me see</think>The answer"
MODEL = "test"

# Non-streamed, input as a string: the reasoning is a reasoning item, the answer a message.
r = client.responses.create(model=MODEL, input=THINKER)
assert r.object == "response" and r.status == "completed", r
assert r.output_text == "The answer", r
kinds = [item.type for item in r.output]
assert kinds == ["reasoning", "message"], kinds
assert r.output[0].content[0].type == "reasoning_text", r.output[0]
assert r.output[0].content[0].text == "hmm let me see", r.output[0]
assert r.output[1].role == "assistant" and r.output[1].content[0].type == "output_text"
assert r.usage.output_tokens == 5, r.usage
assert r.usage.total_tokens == r.usage.input_tokens + 5, r.usage

# Input as messages with instructions; the earlier output (reasoning item included) sent back.
r2 = client.responses.create(
    model=MODEL,
    instructions="Be brief.",
    input=[
        {"role": "user", "content": "first"},
        *[item.model_dump(exclude_none=True) for item in r.output],
        {"role": "user", "content": [{"type": "input_text", "text": "second words"}]},
    ],
    max_output_tokens=64,
    temperature=0.0,
    top_p=1.0,
)
# The echo answers the last user turn; the prompt opened <think> and nothing closed it, so the
# whole answer is reasoning and the message is empty.
assert r2.output[0].type == "reasoning", r2
assert r2.output[0].content[0].text == "second words", r2
assert r2.output_text == "", r2
assert r2.usage.input_tokens > r.usage.input_tokens, (r.usage, r2.usage)

# max_output_tokens reached: incomplete, with the reason.
r3 = client.responses.create(model=MODEL, input=THINKER, max_output_tokens=2)
assert r3.status == "incomplete", r3
assert r3.incomplete_details.reason == "max_output_tokens", r3
# The message item is marked incomplete too, as OpenAI marks it.
assert r3.output[-1].type == "message" and r3.output[-1].status == "incomplete", r3.output

# Streamed: OpenAI's events in order, the deltas adding up to the answer.
events = list(client.responses.create(model=MODEL, input=THINKER, stream=True))
types = [e.type for e in events]
assert types[0] == "response.created" and types[1] == "response.in_progress", types
assert types[-1] == "response.completed", types
assert [e.sequence_number for e in events] == list(range(len(events))), types
reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert reasoning == "hmm let me see", reasoning
assert text == "The answer", text
done = [e for e in events if e.type == "response.output_text.done"]
assert len(done) == 1 and done[0].text == "The answer", done
# Reasoning is over before the answer begins.
last_reasoning = max(i for i, t in enumerate(types) if t == "response.reasoning_text.delta")
first_text = types.index("response.output_text.delta")
assert last_reasoning < first_text, types
final = events[-1].response
assert final.output_text == "The answer" and final.usage.output_tokens == 5, final

# The client's own stream helper.
with client.responses.stream(model=MODEL, input=THINKER) as stream:
    for _ in stream:
        pass
    final = stream.get_final_response()
assert final.output_text == "The answer", final

# What r1d cannot honour is refused, naming the field.
for kwargs, param in [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0]"),
]:
    args = {"model": MODEL, "input": THINKER, **kwargs}
    try:
        client.responses.create(**args)
        raise AssertionError(f"{kwargs} was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == param, (kwargs, e)

print("all checks passed")
