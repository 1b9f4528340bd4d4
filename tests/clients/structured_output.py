"""Structured output with the official `openai` and `ollama` Python packages against a real model
(SmolLM2-135M-Instruct on the llama.cpp plugin): `response_format` (`json_object`, `json_schema`
with `strict`), `chat.completions.parse` with a Pydantic model, and Ollama's `format` ("json" and
a schema). Run by tests/tests/e2e/clients.rs. Nothing here judges what the model says — only that
the answer parses as JSON and validates against the schema it was asked for (`jsonschema`)."""

import json
import sys

import jsonschema
import ollama
import openai
import pydantic

from r1d_socket import openai_client, ollama_client

# argv[1]: r1d's Unix socket; argv[2]: the name r1d lists the model by (requests wait while it loads).
socket, model = sys.argv[1], sys.argv[2]
client = openai_client(socket)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer in JSON."},
    {"role": "user", "content": 'Write {"name": "Tom", "age": 3} as JSON.'},
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def answer_of(r):
    choice = r.choices[0]
    # An answer cut by max_tokens would not be whole JSON: say so instead of a parse error.
    assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)
    return choice.message.content


# json_object: any JSON object.
r = client.chat.completions.create(
    model=model, messages=MESSAGES, temperature=0, max_tokens=200,
    response_format={"type": "json_object"},
)
value = json.loads(answer_of(r))
assert isinstance(value, dict), value

# json_schema with strict: valid against the schema; streamed the same way (the pieces join).
for stream in (False, True):
    kwargs = dict(
        model=model, messages=MESSAGES, temperature=0, max_tokens=200,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "strict": True, "schema": PERSON}},
    )
    if stream:
        text, finish = "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        assert finish == "stop", (finish, text)
    else:
        text = answer_of(client.chat.completions.create(**kwargs))
    jsonschema.validate(json.loads(text), PERSON)

# Sampled (temperature 0.8, seeded) still validates: the grammar, not the luck of greedy.
for seed in (1, 2, 3):
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0.8, seed=seed, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    jsonschema.validate(json.loads(answer_of(r)), PERSON)


# The openai client's own structured output: a Pydantic model in, a parsed instance out.
class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    age: int = pydantic.Field(ge=0, le=99)


parsed = client.chat.completions.parse(
    model=model, messages=MESSAGES, temperature=0, max_tokens=200, response_format=Pet,
)
assert isinstance(parsed.choices[0].message.parsed, Pet), parsed

# A schema llama.cpp cannot turn into a grammar is a 400 naming response_format.
try:
    client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=5,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
    )
    raise AssertionError("an unconvertible schema was accepted")
except openai.BadRequestError as e:
    assert "response_format" in str(e), e

# Ollama: format "json" (an object) and format = a schema.
oc = ollama_client(socket)
r = oc.chat(model=model, messages=MESSAGES, format="json", options={"temperature": 0, "num_predict": 200})
assert r.done_reason == "stop", r
assert isinstance(json.loads(r.message.content), dict), r.message.content
r = oc.chat(model=model, messages=MESSAGES, format=PERSON, options={"temperature": 0, "num_predict": 200})
assert r.done_reason == "stop", r
jsonschema.validate(json.loads(r.message.content), PERSON)
r = oc.generate(model=model, prompt="A cat named Tom, 3 years old, as JSON:", format=Pet.model_json_schema(),
                options={"temperature": 0, "num_predict": 200})
assert r.done_reason == "stop", r
Pet.model_validate_json(r.response)

# Keys come in the schema's order, not sorted (OpenAI's structured outputs keep it).
ORDERED = {
    "type": "object",
    "properties": {"zeta": {"type": "string", "maxLength": 10}, "mid": {"type": "integer"},
                   "alpha": {"type": "boolean"}},
    "required": ["zeta", "mid", "alpha"],
    "additionalProperties": False,
}
for stream in (False, True):
    kwargs = dict(model=model, messages=MESSAGES, temperature=0, max_tokens=200,
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "o", "strict": True, "schema": ORDERED}})
    if stream:
        text = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(stream=True, **kwargs) if c.choices)
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content
    assert list(json.loads(text)) == ["zeta", "mid", "alpha"], text
r = oc.chat(model=model, messages=MESSAGES, format=ORDERED, options={"temperature": 0, "num_predict": 200})
assert list(json.loads(r.message.content)) == ["zeta", "mid", "alpha"], r.message.content

print("all checks passed")
