"""Params check: the params file read once by the CLI validated, or every problem listed as an issue."""

from __future__ import annotations

from dataclasses import dataclass

from geno_pipeline.config import LoadedParams
from geno_pipeline.preflight.checks.base import Finding, passed, problem

__all__ = ["ParamsCheck"]

_REMEDY = "fix params.yaml as the message says"


@dataclass(frozen=True)
class ParamsCheck:
    """`params`: one row; one issue per problem."""

    loaded: LoadedParams
    name: str = "params"

    def probe(self) -> LoadedParams:
        return self.loaded

    def assess(self, facts: LoadedParams) -> list[Finding]:
        if facts.error is None:
            return [passed(self.name, f"{facts.path} is valid")]
        problems = facts.error.problems or (str(facts.error),)
        row = problem(
            self.name, "error", "params.invalid", str(facts.path),
            f"{len(problems)} problem(s) in {facts.path}; defaults used for the other checks", _REMEDY, detail=problems[0],
        )  # fmt: skip
        rest = [problem(self.name, "error", "params.invalid", str(facts.path), p, _REMEDY, row=False) for p in problems[1:]]
        return [row, *rest]
