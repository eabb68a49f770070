"""YAML parsing that refuses duplicate keys (DVC's own reader does too, so the two tools agree)."""

from __future__ import annotations

from typing import Any

import yaml

from geno_pipeline.errors import shorten

__all__ = ["YamlError", "parse_yaml"]


class YamlError(ValueError):
    """The text is not valid YAML, or a mapping repeats a key."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a repeated key, and which refuses aliases: `*name` repeats a node, so a few
    hundred bytes of nested aliases expand to gigabytes (a "billion laughs"); a params file never needs them."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlError(
                f"line {event.start_mark.line + 1}: a YAML alias (*{shorten(str(event.anchor))}) repeats another node; aliases are "
                "refused (nested ones expand without bound): write the value out"
            )
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call]


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            first = seen.get(key)
        except TypeError:
            raise YamlError(f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value") from None
        if first is not None:
            raise YamlError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first set on line {first}); "
                "YAML readers disagree on which value wins, and DVC refuses the file"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    """Parse one YAML document; raise `YamlError` with the line of the first problem."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise YamlError(f"not valid YAML ({where}{exc.problem or exc})") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise YamlError(f"not valid YAML ({exc})") from None
