"""Base class and error type shared by every ds_config section model.

Each section of a ds_config (``zero_optimization``, ``fp16``, ``wandb``, ...)
is a pydantic model deriving from `DeepSpeedConfigModel`. The base class
gives every section the same behaviour, so users see one consistent contract:

* values equal to the string ``"auto"`` are dropped before validation, so the
  field keeps its default (HF Trainer writes ``"auto"`` placeholders and relies
  on this);
* unknown keys are rejected with one readable line that names the section, the
  bad key and the closest valid key;
* wrong types are rejected with one line naming ``section.key`` and the
  expected type, instead of a multi-line pydantic dump;
* renamed keys keep working through ``_deprecated_keys`` (logged once per
  parse) and pydantic aliases (accepted silently).
"""
from __future__ import annotations

import difflib
import enum
import types
import typing
from typing import Any, ClassVar, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from deepspeed.utils.logging import logger

__all__ = [
    "DeepSpeedConfigError",
    "DeepSpeedConfigModel",
    "drop_auto",
    "closest_key",
    "validator_error",
    "AUTO",
]

#: Placeholder value that means "use the default" (written by HF integrations).
AUTO = "auto"

# Error type used for our own unknown/conflicting-key errors, so that the
# formatter can print pydantic's message verbatim for them.
_DS_ERROR_TYPE = "deepspeed_config"


class DeepSpeedConfigError(ValueError):
    """A ds_config value is missing, unknown, of the wrong type or inconsistent.

    `path` (ds_config keys below the section) and `detail` (the message
    without its location) let an enclosing section re-prefix the location
    when a nested section fails.
    """

    def __init__(self, message: str, *, path: tuple[str, ...] = (), detail: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.detail = message if detail is None else detail


def drop_auto(value: Any) -> Any:
    """Return `value` with every dict entry equal to ``"auto"`` removed, recursively.

    Lists are walked but never shortened: removing an element would shift the
    meaning of the others.
    """
    if isinstance(value, dict):
        return {k: drop_auto(v) for k, v in value.items() if not (isinstance(v, str) and v == AUTO)}
    if isinstance(value, list):
        return [drop_auto(v) for v in value]
    return value


def closest_key(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `key` (difflib ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(key, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(key: str, candidates: Iterable[str]) -> str:
    match = closest_key(key, candidates)
    return f"; did you mean {match!r}?" if match else ""


class DeepSpeedConfigModel(BaseModel):
    """Base for ds_config section models.

    Subclasses set `_section` to the ds_config key the model is parsed from,
    used only in error messages, and may set `_deprecated_keys` (old key ->
    field name) for renamed keys. Sections that need a richer translation of
    legacy keys override `_translate_legacy`.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        validate_assignment=True,
        use_enum_values=True,
        arbitrary_types_allowed=True,
        # Fields such as zero's `model_persistence_threshold` are ds_config
        # keys; older pydantic releases warn about the `model_` prefix.
        protected_namespaces=(),
    )

    #: ds_config path of this section, e.g. "zero_optimization" (messages only).
    _section: ClassVar[str] = ""
    #: Renamed keys: deprecated ds_config key -> current field name.
    _deprecated_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _to_config_error(type(self), err) from None

    def __setattr__(self, name: str, value: Any) -> None:
        # validate_assignment raises pydantic's ValidationError; surface ours.
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise _to_config_error(type(self), err) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise _to_config_error(cls, err) from None

    @classmethod
    def accepted_keys(cls) -> set[str]:
        """Every ds_config key this section accepts: field names, aliases and deprecated keys."""
        keys = set(cls._deprecated_keys) | set(cls._extra_legacy_keys())
        for name, field in cls.model_fields.items():
            keys.add(name)
            if field.alias:
                keys.add(field.alias)
        return keys

    @classmethod
    def _extra_legacy_keys(cls) -> Iterable[str]:
        """Legacy keys handled by `_translate_legacy` that are not simple renames."""
        return ()

    @classmethod
    def _translate_legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Map deprecated keys onto current fields; `data` is a private copy."""
        for old, new in cls._deprecated_keys.items():
            if old not in data:
                continue
            value = data.pop(old)
            logger.warning("%s is deprecated; use %s instead", _join(cls._section, old), _join(cls._section, new))
            target = _key_in_data(cls, new, data)
            if target is not None and data[target] != value:
                raise validator_error(f"both {old!r} (deprecated) and {target!r} are set, to different values")
            data.setdefault(target or new, value)
        return data

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        """Drop "auto", translate legacy keys and reject unknown keys with a hint."""
        if isinstance(data, BaseModel) or not isinstance(data, dict):
            return data
        data = cls._translate_legacy(drop_auto(dict(data)))
        accepted = cls.accepted_keys()
        for key in data:
            if key not in accepted:
                raise validator_error(f"unknown key {key!r}{_did_you_mean(str(key), accepted)}")
        _reject_alias_conflicts(cls, data)
        return data


def validator_error(message: str) -> PydanticCustomError:
    """An error for a section validator to raise, reported verbatim at the section's path.

    Pydantic would re-format braces in a plain message template and prefix
    "Value error, " to a ValueError; this keeps the text exactly as written.
    """
    return PydanticCustomError(_DS_ERROR_TYPE, "{message}", {"message": message})


def _join(*parts: Any) -> str:
    return ".".join(str(p) for p in parts if p != "")


def _key_in_data(cls: type[BaseModel], field_name: str, data: dict[str, Any]) -> str | None:
    """Which spelling (name or alias) of `field_name` appears in `data`, if any."""
    field = cls.model_fields.get(field_name)
    for key in (field_name, field.alias if field else None):
        if key is not None and key in data:
            return key
    return None


def _reject_alias_conflicts(cls: type[BaseModel], data: dict[str, Any]) -> None:
    """Giving a field under both its name and its alias is ambiguous unless the values agree."""
    for name, field in cls.model_fields.items():
        if field.alias and field.alias != name and name in data and field.alias in data:
            if data[name] != data[field.alias]:
                raise validator_error(f"both {field.alias!r} and {name!r} are set, to different values")
            # Keep the pydantic name only; pydantic would otherwise pick one silently.
            data.pop(field.alias)


# --------------------------------------------------------------------------
# Error formatting: one line per problem, naming section.key and the type.
# --------------------------------------------------------------------------


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside `annotation` (e.g. ``Foo | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    """Readable name of a field annotation for messages ("int", "one of 'cpu', 'nvme'")."""
    if annotation is None or annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a dict (section)"
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        return getattr(origin, "__name__", str(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _resolve(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """Walk an error location through nested models.

    Returns the readable path (ds_config key spellings) and the annotation of
    the deepest field reached, or None when the location ends at a model.
    """
    path: list[str] = []
    current: type[BaseModel] | None = model
    annotation: Any = None
    for part in loc:
        if isinstance(part, int):
            path.append(f"[{part}]")
            continue
        if current is None:
            # Below a leaf field pydantic adds union-branch tags such as
            # 'int' or 'function-after[...]': internals, not ds_config keys.
            continue
        field_name = next((n for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        path.append(str(part))
        if field_name is None:
            # An unknown key: nothing below it can be resolved.
            current, annotation = None, None
            continue
        annotation = current.model_fields[field_name].annotation
        current = _model_in(annotation)
    return path, annotation


def _format_one(model: type[BaseModel], error: Any) -> tuple[list[str], str]:
    """(key path below `model`'s section, message without location) for one pydantic error."""
    path, annotation = _resolve(model, tuple(error.get("loc", ())))
    kind = error.get("type", "")
    inner = (error.get("ctx") or {}).get("error")
    if isinstance(inner, DeepSpeedConfigError):
        # A nested section failed inside its own __init__ and already
        # explained itself; only its location needs our prefix.
        return path + list(inner.path), inner.detail
    if kind == _DS_ERROR_TYPE:
        return path, error["msg"]
    if kind == "missing":
        return path, "required key is missing"
    if kind == "extra_forbidden":
        # Safety net: our own check in `_prepare` normally catches these first.
        *parent, key = path or ["?"]
        parent_model = _model_in(_resolve(model, tuple(parent))[1]) if parent else model
        candidates = parent_model.accepted_keys() if hasattr(parent_model, "accepted_keys") else []
        return list(parent), f"unknown key {key!r}{_did_you_mean(key, candidates)}"
    msg = error.get("msg", "invalid value")
    if kind in ("value_error", "assertion_error"):
        # Raised by our own validators: their text is already the explanation
        # (drop pydantic's "Value error, " prefix).
        return path, msg.split(", ", 1)[-1]
    got = error.get("input")
    got_text = "a dict" if isinstance(got, dict) else f"{got!r} ({type(got).__name__})"
    expected = f"expected {_type_name(annotation)}, " if annotation is not None else ""
    return path, f"{expected}got {got_text}: {msg}"


def _to_config_error(model: type[BaseModel], err: ValidationError) -> DeepSpeedConfigError:
    """Turn pydantic's multi-line dump into one DeepSpeedConfigError line."""
    errors = err.errors()
    if not errors:
        return DeepSpeedConfigError(str(err))
    path, detail = _format_one(model, errors[0])
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    where = _join(getattr(model, "_section", ""), *path) or model.__name__
    return DeepSpeedConfigError(f"{where}: {detail}", path=tuple(path), detail=detail)
