"""The spec reference in Markdown, generated from the pydantic model (``docs/spec-reference.md``)."""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticUndefined

from .model import Spec

REFERENCE_FILE = "docs/spec-reference.md"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Every model reachable from ``root``, in the order a reader meets them."""
    seen: list[type[BaseModel]] = []

    def visit(annotation) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.append(annotation)
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for argument in typing.get_args(annotation):
            visit(argument)

    visit(root)
    return seen


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, __import__("types").UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(dict.fromkeys(names))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"map of name → {_type_name(typing.get_args(annotation)[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
            return "`" + ", ".join(f"{k}: {{type: {v.type}}}" for k, v in value.items()) + "`"
        return "" if value in ({}, []) or isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is None or field.default is PydanticUndefined:
        return ""
    return f"`{field.default!r}`"


def reference_markdown() -> str:
    lines = [
        "# mantik.yaml reference",
        "",
        "Generated from the pydantic model by `mantik schema --format markdown`; a test keeps it current.",
        "Unknown keys are errors. Names (of experiments, backends, ...) match `[A-Za-z0-9][A-Za-z0-9_.-]*`.",
    ]
    for model in _models(Spec):
        lines += ["", f"## {model.__name__}", ""]
        doc = (model.__doc__ or "").strip().splitlines()
        if doc and not doc[0].startswith(("Usage", "!!")) and model is not Spec:
            lines += [doc[0], ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            # set by mantik, not written (SkipJsonSchema() is the marker pydantic puts in the field metadata)
            if any(isinstance(m, SkipJsonSchema) for m in field.metadata):  # type: ignore[misc]
                continue
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"
