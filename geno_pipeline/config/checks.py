"""The checks inside one params section, as pure functions returning (dotted key, value, message, fix), and how a
section's validator raises them (`raise_if`) so that loading can name every problem with its fix."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Problem", "Problems", "raise_if", "record_list_problems", "weight_problems"]

Problems = list[tuple[str, Any, str, str]]
"""(dotted key relative to where it is raised, value, message, fix)."""


class Problem(ValueError):
    """A cross-field problem raised inside a pydantic validator: carries (dotted key relative to the section, value, message,
    fix)."""

    def __init__(self, problems: Problems) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, _, m, _ in problems))
        self.problems = problems


def raise_if(problems: Problems) -> None:
    """Raise the problems, if any, from a validator."""
    if problems:
        raise Problem(problems)


def record_list_problems(source: str, records: list[str] | None, valid_records: list[str] | None) -> Problems:
    """Problems of `data.records` / `data.valid_records` that need no FASTA to see, as (key, value, what, fix)."""
    problems: Problems = []
    for key, names in (("records", records), ("valid_records", valid_records)):
        if names is None:
            continue
        if source != "fasta":
            problems.append((key, names, "selects FASTA records, but source is not 'fasta'", f"set data.{key}: null or use source: fasta"))
        elif not names:
            problems.append((key, names, "is an empty list", f"name at least one record, or set data.{key}: null"))
        elif len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            problems.append((key, names, f"names {', '.join(repeated)} more than once", "list each record once"))
        elif any(not n or n != n.strip() or len(n.split()) != 1 for n in names):
            problems.append(
                (key, names, "holds an empty name or one with white space", "use record names as the first word of each '>' line")
            )
    if source == "fasta" and records and valid_records:
        outside = [n for n in valid_records if n not in set(records)]
        if outside:
            problems.append(
                (
                    "valid_records",
                    valid_records,
                    f"names {', '.join(outside)}, not in data.records",
                    "add them to data.records or drop them here",
                )
            )
        elif set(valid_records) == set(records):
            problems.append(
                (
                    "valid_records",
                    valid_records,
                    "holds every record of data.records, leaving none for training",
                    "keep at least one record for training",
                )
            )
    return problems


def weight_problems(items: dict[Any, Any], known: tuple[Any, ...] | None) -> Problems:
    """Problems of a weights mapping, keyed by entry (relative to the field)."""
    problems: Problems = []
    if not items:
        problems.append(("", items, "must not be empty", "give at least one entry with a positive weight"))
    for name, weight in items.items():
        if known is not None and name not in known:
            problems.append((str(name), weight, f"unknown entry {name!r}", f"use one of {', '.join(map(str, known))}"))
        elif known is None and name < 1:
            problems.append((str(name), name, "rollout length K must be >= 1", "use K = 1, 2, 3, ..."))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            problems.append((str(name), weight, "weight must be a finite number > 0", "use a positive weight or drop the entry"))
    return problems
