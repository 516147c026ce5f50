"""The inference request's JSON schema (KServe v2), and the one check every HTTP request's JSON goes through.

The pydantic models are the schema: the OpenAPI document shows them, and they word every refusal. They are
strict (pydantic would otherwise turn ``true`` into 1 and ``1.0`` into 1) and allow extra fields, as the
protocol does. Checking the common well-formed request by hand, on the parsed JSON itself, costs a few
plain type tests and builds no objects; the hand check only ever accepts what the models accept (a test
holds it to that), and anything it does not accept goes through the models, which accept it (the request is
then used as they read it) or word the first thing wrong with it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from vggexport.serve.errors import ProtocolError


class Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class RequestInput(Strict):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(Strict):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferenceRequest(Strict):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def checked_request(document: Any) -> dict[str, Any]:
    """The parsed JSON as an ``InferenceRequest`` (plain dicts and lists), or the models' first objection as a
    ``ProtocolError``."""
    if well_formed(document):
        return document  # type: ignore[no-any-return]
    try:
        return InferenceRequest.model_validate(document).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise ProtocolError(f"invalid inference request at {where}: {first['msg']}") from None


def well_formed(document: Any) -> bool:
    """True only where ``InferenceRequest`` would accept ``document``: exact JSON types, as strict mode wants."""
    if type(document) is not dict:
        return False
    inputs, outputs = document.get("inputs"), document.get("outputs")
    if type(inputs) is not list or not inputs or not optional(document, "id", str) \
            or not optional(document, "parameters", dict):
        return False
    if not all(type(item) is dict and type(item.get("name")) is str and type(item.get("datatype")) is str
               and is_shape(item.get("shape")) and optional(item, "parameters", dict) for item in inputs):
        return False
    return outputs is None or (type(outputs) is list and all(
        type(item) is dict and type(item.get("name")) is str and optional(item, "parameters", dict)
        for item in outputs))


def optional(document: dict[str, Any], key: str, kind: type) -> bool:
    value = document.get(key)
    return value is None or type(value) is kind


def is_shape(shape: Any) -> bool:
    return type(shape) is list and all(type(d) is int for d in shape)  # bool is not int here, as in strict mode
