"""Configuration sources, the same everywhere (the CLI, the flows, deployments): a YAML file, overrides merged into
it key by key, `--set a.b=value` pairs, and validation errors of the typed models (pydantic) as one line that
suggests the closest known key.

Key by key: `{"model": {"d_model": 32}}` over a file that sets `model.architecture: conformer` changes d_model and
keeps the conformer; a section given as a whole never replaces the file's section. Lists and scalars replace.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from avsed.core.errors import AvsedError

__all__ = ["ConfigError", "merge", "parse_set", "parse_sets", "read_yaml_mapping", "resolve", "validated",
           "error_message", "did_you_mean", "known_keys"]


class ConfigError(AvsedError, ValueError):
    """A setting that cannot be used: an unknown key, a value of the wrong type, a missing or unreadable file.
    The message names the file or option, the key, and the closest known key."""


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`overrides` applied to `base` key by key (nested mappings merge, anything else replaces); new dicts."""
    out = {k: (merge(v, {}) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge(value, {})
        else:
            out[key] = value
    return out


def parse_set(item: str) -> dict[str, Any]:
    """One `--set a.b=value` as a nested mapping ({"a": {"b": value}}); the value is read as YAML, so `32` is an
    int, `1e-3` a float, `[logmel, openl3]` a list, `null` None and `true` a bool."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set model.d_model=32 or "
                          f"--set download.concurrency=2")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(exc).split())}); quote it "
                          f"or write a list as [a, b]") from None
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; a user means the number
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part.strip(), {})
    node[parts[-1].strip()] = value
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def parse_sets(items: Iterable[str] | None) -> dict[str, Any]:
    """Every `--set`, in order (a later one wins), as one nested mapping."""
    out: dict[str, Any] = {}
    for item in items or ():
        out = merge(out, parse_set(item))
    return out


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A config file's settings: a YAML mapping (an empty file is no settings)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; check the path (configs/*.yaml hold examples)") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}); give a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of settings (key: value), got a "
                          f"{type(data).__name__}")
    return data


def resolve(model: type, config: Any = None, config_file: str | Path | None = None,
            sets: Mapping[str, Any] | None = None, config_name: str = "config"):
    """The one way a run's config is put together (CLI, flows, deployments): the file (or the model's defaults),
    then `config` merged in key by key (a `model` instance counts only the keys it was given: pydantic records
    them), then `sets`; validated by `model.from_dict`. Errors name the file, `config_name` (what `config` is to the
    caller: "config", "flags") and "--set"."""
    if isinstance(config, model) and not config_file and not sets:
        return config.validate()
    base = read_yaml_mapping(config_file) if config_file else {}
    if isinstance(config, model):
        config = config.model_dump(mode="json", exclude_unset=True)
    source = ", ".join(filter(None, [str(config_file) if config_file else None, config_name if config else None,
                                     "--set" if sets else None])) or None
    return model.from_dict(merge(merge(base, config), sets), source=source)


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """' (did you mean 'features'?)' for the closest choice, or '' when none is close."""
    close = get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validated(model: type, data: Any, source: str | None = None):
    """`model.model_validate(data)`, with a validation failure as one ConfigError line naming `source` (a file, an
    option or the model), each bad key and the closest known key."""
    from pydantic import ValidationError

    if data is not None and not isinstance(data, Mapping) and not isinstance(data, model):
        raise ConfigError(f"{source or model.__name__}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(error_message(exc, model, source)) from None


def error_message(exc, model: type, source: str | None = None) -> str:
    """A pydantic ValidationError of `model` as one line: unknown keys grouped per section with a suggestion,
    other errors as `section.key: what is wrong (got value)` (the members of a union joined by 'or')."""
    unknown: dict[tuple, list[str]] = {}
    problems: dict[str, list[tuple[str, str, str]]] = {}
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") in ("extra_forbidden", "unexpected_keyword_argument") and loc:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        what = _dotted(loc) or "settings"
        problems.setdefault(what, []).append(_problem(err))
    parts = []
    for section, keys in unknown.items():
        known = known_keys(model, section)
        hints = [f"{k!r}{did_you_mean(k, known)}" for k in keys]
        where = f" in {_dotted(section)!r}" if section else ""
        # the whole list only when no key is close to a known one: a suggestion says more
        listing = (f"; known{' there' if section else ''}: {', '.join(known)}"
                   if known and not any("did you mean" in h for h in hints) else "")
        parts.append(f"unknown keys {', '.join(hints)}{where}{listing}")
    for what, found in problems.items():
        messages = " or ".join(dict.fromkeys(m for m, _, _ in found))
        got = next((g for _, g, _ in found if g), "")
        hint = next((h for _, _, h in found if h), "")
        parts.append(f"{what}: {messages}{got}{hint}")
    prefix = f"{source}: " if source else f"{model.__name__}: "
    return prefix + "; ".join(parts)


def _problem(err: dict) -> tuple[str, str, str]:
    """(what is wrong, ' (got value)', ' (did you mean ...?)') of one pydantic error."""
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "missing":
        return "required", "", ""
    hint = ""
    expected = (err.get("ctx") or {}).get("expected")
    if err.get("type") == "literal_error" and expected:
        hint = did_you_mean(err.get("input"), [c.strip(" '") for c in expected.replace(" or ", ",").split(",")])
    value = err.get("input")
    # a value error's message is ours and names the value already
    got = "" if err.get("type") == "value_error" or len(repr(value)) > 80 else f" (got {value!r})"
    return msg[:1].lower() + msg[1:], got, hint


def _dotted(loc: Iterable[Any]) -> str:
    # pydantic puts the union member or the function name into a location ("function-after[...]", "list[int]");
    # a user knows the keys only
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and "[" in p))


def known_keys(model: type, section: tuple = ()) -> list[str]:
    """The keys a model (or a nested section of it, e.g. ("model", "cnn")) accepts."""
    node: Any = model
    for part in section:
        node = _field_type(node, part)
        if node is None:
            return []
    return _keys_of(node)


def _keys_of(node: Any) -> list[str]:
    if isinstance(node, type) and hasattr(node, "model_fields"):
        return list(node.model_fields)
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return []


def _field_type(node: Any, name: Any) -> Any:
    if isinstance(node, type) and hasattr(node, "model_fields"):
        field = node.model_fields.get(str(name))
        return _structured(field.annotation) if field is not None else None
    if dataclasses.is_dataclass(node):
        hints = typing.get_type_hints(node)
        return _structured(hints.get(str(name)))
    return None


def _structured(annotation: Any) -> Any:
    """The model or dataclass inside an annotation (`X | None`, `Optional[X]`), if any."""
    if annotation is None:
        return None
    if _keys_of(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if _keys_of(arg):
                return arg
    return None
