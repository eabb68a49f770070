"""Reading params.yaml: every problem of a file in one `ConfigError`, each naming the key, the value and the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from geno_pipeline.config.checks import Problem
from geno_pipeline.config.stages import Params
from geno_pipeline.errors import ConfigError

__all__ = ["LoadedParams", "load_params", "missing_keys", "params_from_mapping"]


_FIXES = {
    "missing": "add the key",
    "extra_forbidden": "remove the key or fix its spelling",
    "int_type": "use an integer",
    "float_type": "use a number",
    "bool_type": "use true or false",
    "string_type": "use a string",
    "dict_type": "use a mapping",
    "model_type": "use a mapping of the section's keys",
    "literal_error": "use one of the allowed values",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "finite_number": "use a finite number",
}


def _exponent_string(value: Any) -> bool:
    """`3e-3` and friends: YAML 1.1 (PyYAML, DVC) reads an exponent without a dot as a string."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return "e" in value.lower()


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _fix_for(kind: str, value: Any) -> str:
    if _non_finite(value):
        return "use a finite number (not .nan or .inf)"
    if kind in ("float_type", "int_type") and _exponent_string(value):
        number = float(value)
        if kind == "int_type":
            return f"YAML reads {value!r} as text; write the integer {int(number)}" if number.is_integer() else "use an integer"
        return f"YAML reads {value!r} as text; write {number:.10g} or {_with_dot(value)}"
    return _FIXES.get(kind, "correct the value")


def _with_dot(value: str) -> str:
    """`3e-3` -> `3.0e-3`, `6.0e1` -> `6.0e+1`: the forms YAML 1.1 (PyYAML, DVC) reads as a float, which needs both a dot
    and a signed exponent."""
    mantissa, _, exponent = value.lower().partition("e")
    sign = "" if exponent.startswith(("+", "-")) else "+"
    return (mantissa if "." in mantissa else f"{mantissa}.0") + "e" + sign + exponent


def _fmt_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems_from(exc: ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, Problem):
            for key, value, message, fix in inner.problems:
                full = ".".join(part for part in (loc, key) if part)
                out.append(f"{full} = {_fmt_value(value)}: {message}; fix: {fix}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        fix = _fix_for(err["type"], err.get("input"))
        if err["type"] == "extra_forbidden":
            out.append(f"{loc}: unknown key; fix: {fix}")
        elif err["type"] == "missing":
            out.append(f"{loc}: missing; fix: {fix}")
        else:
            value = err.get("input")
            message = "is not a finite number" if _non_finite(value) else message
            out.append(f"{loc} = {_fmt_value(value)}: {message}; fix: {fix}")
    return out


def params_from_mapping(raw: Any, *, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise `ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = tuple(_problems_from(exc))
        body = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{source}: {len(problems)} {noun}:\n{body}", problems) from None


@dataclass(frozen=True)
class LoadedParams:
    """A params file as read once per command: valid params, or the defaults plus every problem."""

    path: Path
    params: Params
    error: ConfigError | None = None

    @property
    def valid(self) -> bool:
        """The file validated."""
        return self.error is None

    @classmethod
    def read(cls, path: Path | str) -> LoadedParams:
        """Read `path`; an invalid file is kept as its error (preflight reports it as findings)."""
        try:
            return cls(Path(path), load_params(path))
        except ConfigError as exc:
            return cls(Path(path), Params(), exc)

    def require(self) -> Params:
        """The params, or raise the file's `ConfigError`."""
        if self.error is not None:
            raise self.error
        return self.params


def load_params(path: Path | str) -> Params:
    """Read and validate a params file; raise `ConfigError` listing every problem.

    The file must hold every section (an empty file or a missing section is refused, not defaulted),
    and a repeated key is refused, as DVC refuses it.
    """
    from geno_pipeline.readers import read_yaml

    path = Path(path)
    raw = read_yaml(path, error=ConfigError, fix="run from the project root or pass --params PATH to a UTF-8 YAML params file")
    if raw is None:
        raise ConfigError(f"{path}: empty params file; fix: write every section ({', '.join(Params.model_fields)}), as in the README")
    if isinstance(raw, dict):
        missing = [name for name in Params.model_fields if name not in raw]
        if missing:
            problems = tuple(f"{name}: missing section; fix: add the `{name}:` section (see the README's params table)" for name in missing)
            body = "\n".join(f"  - {p}" for p in problems)
            raise ConfigError(f"{path}: {len(problems)} missing section(s):\n{body}", problems)
    params = params_from_mapping(raw, source=str(path))
    problems = tuple(
        f"{key}: missing; fix: add the `{key.rpartition('.')[2]}:` mapping with its keys" if isinstance(default, BaseModel)
        else f"{key}: missing; fix: add the key (its default is {_fmt_value(default)})"
        for key, default in missing_keys(Params, raw)
    )  # fmt: skip
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} missing key(s); every stage reads its keys from the file:\n{body}", problems)
    return params


def missing_keys(model: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, default) of every field of `model` and its nested sections that the parsed mapping `raw` lacks (a
    stage run outside DVC reads the same complete file DVC's params lists demand; nothing silently takes a default)."""
    out: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            out.append((key, info.get_default(call_default_factory=True)))
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) and isinstance(raw[name], dict):
            out += missing_keys(info.annotation, raw[name], f"{key}.")
    return out
