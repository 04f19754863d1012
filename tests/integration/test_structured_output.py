"""Structured output enforced by grammar: sampled outputs at temperature 1.0 always validate."""
import json

import jsonschema
import openai
import pytest

S = {"type": "string", "maxLength": 8}
I = {"type": "integer", "minimum": -1000, "maximum": 1000}  # unbounded digits could run to max_tokens
SCHEMAS = [
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": I, "tag": S},
                                               "required": ["id"], "additionalProperties": False}},
     "required": ["user"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
     "additionalProperties": False},
    {"type": "object", "properties": {"v": {"anyOf": [I, S]}}, "required": ["v"],
     "additionalProperties": False},
    {"type": "object", "properties": {"v": {"oneOf": [{"type": "boolean"}, {"type": "null"}]}}, "required": ["v"],
     "additionalProperties": False},
    {"type": "object", "properties": {"a": I, "b": {"enum": ["x", "y"]}}, "additionalProperties": False,
     "allOf": [{"properties": {"a": {"minimum": 1, "maximum": 3}}, "required": ["a"]}, {"required": ["b"]}]},
    # Numbers with bounds (integers: a random model's fraction digits would run to max_tokens).
    {"type": "object", "properties": {"x": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                      "y": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9}},
     "required": ["x", "y"], "additionalProperties": False},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}}, "required": ["code"],
     "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3,
                                                "items": {"type": "object", "properties": {"k": S, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
                                                          "required": ["k", "n"], "additionalProperties": False}}},
     "required": ["items"], "additionalProperties": False},
]


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_100_samples_validate(client, i):
    schema = SCHEMAS[i]
    outputs = []
    while len(outputs) < 100:
        r = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Answer in JSON."}], temperature=1.0, n=16,
            max_tokens=200, response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
        for c in r.choices:
            assert c.finish_reason == "stop", c.message.content
            outputs.append(c.message.content)
    for text in outputs[:100]:
        jsonschema.validate(json.loads(text), schema)


def test_json_object_and_responses_text_format(client):
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "JSON please"}],
                                       response_format={"type": "json_object"}, max_tokens=200, temperature=1.0, seed=3)
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = SCHEMAS[3]
    resp = client.responses.create(model="tiny-llama", input="color?", max_output_tokens=100,
                                   text={"format": {"type": "json_schema", "name": "c", "schema": schema}})
    jsonschema.validate(json.loads(resp.output_text), schema)


def test_invalid_schema_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}})
    assert "nonsense" in e.value.message and e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "xml"})
