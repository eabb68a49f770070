"""Params check: the params file read once by the CLI validated, or every problem listed as an issue."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from geno_pipeline.config import LoadedParams, world_size_problems
from geno_pipeline.distributed import launcher_problems, planned_world_size
from geno_pipeline.preflight.checks.base import Finding, passed, problem

__all__ = ["ParamsCheck"]

_REMEDY = "fix params.yaml as the message says"


@dataclass(frozen=True)
class ParamsCheck:
    """`params`: one row; one issue per problem. The micro-batch split is checked against the job's world size: a
    launcher's WORLD_SIZE when the environment has one, else runtime.nproc_per_node (which the params model checks);
    WORLD_SIZE and LOCAL_WORLD_SIZE, when set, must describe a job."""

    loaded: LoadedParams
    name: str = "params"
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def probe(self) -> LoadedParams:
        return self.loaded

    def assess(self, facts: LoadedParams) -> list[Finding]:
        env = launcher_problems(self.environ)
        if facts.error is None and env:
            key, value, message, fix = env[0]
            return [problem(self.name, "error", "params.invalid", key, f"{key}={value!r} (the launcher's) {message}", fix)]
        if facts.error is None:
            world = planned_world_size(facts.params.runtime.nproc_per_node, self.environ)
            launched = world_size_problems(world, facts.params.train, key="WORLD_SIZE") if "WORLD_SIZE" in self.environ else []
            if not launched:
                return [passed(self.name, f"{facts.path} is valid")]
            key, value, message, fix = launched[0]
            text = f"{key}={value} (the launcher's) {message}"
            return [problem(self.name, "error", "params.invalid", key, text, f"{fix}, or launch a world size that divides it")]
        problems = facts.error.problems or (str(facts.error),)
        row = problem(
            self.name, "error", "params.invalid", str(facts.path),
            f"{len(problems)} problem(s) in {facts.path}; defaults used for the other checks", _REMEDY, detail=problems[0],
        )  # fmt: skip
        rest = [problem(self.name, "error", "params.invalid", str(facts.path), p, _REMEDY, row=False) for p in problems[1:]]
        return [row, *rest]
