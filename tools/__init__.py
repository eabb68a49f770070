"""Developer harnesses run from a checkout, outside the installed package: the benchmarks (`python -m tools.bench`),
mutation testing (`python -m tools.mutation`), the planted integration bugs (`python -m tools.planted`) and the
fault-injection campaign (`python -m tools.reliability`).

The pipeline never imports them, so an edit here changes no stage's inputs, source digest or output. Importing this
package registers the JSON Schemas of the reports they write (`reports/bench.json`, `reports/bench/scaling.json`,
`reports/mutation.json`, `reports/reliability.json`, `reports/bench/contention.json`) with the pipeline's schema registry.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from geno_pipeline.errors import GenoPipelineError, shorten
from geno_pipeline.schemas import register_schemas

__all__ = ["REPO_ROOT", "TOOL_SCHEMAS", "child_env", "run_tool"]

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_SCHEMAS = {
    "bench": "tools.bench:BenchReport",
    "bench_scaling": "tools.benchtrain:ScalingReport",
    "reliability": "tools.reliability:ReliabilityReport",
    "mutation": "tools.mutation:MutationReport",
    "bench_contention": "tools.contention:ContentionReport",
}
register_schemas(TOOL_SCHEMAS)


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which a child `python -m tools.X` finds this package (the checkout is on its PYTHONPATH)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_tool(name: str, parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int], argv: Sequence[str] | None) -> int:
    """Parse `argv`, run `handler`; a `GenoPipelineError` is one line on stderr and its exit code, as in the CLI."""
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return handler(args)
    except GenoPipelineError as exc:
        print(f"{name}: error: {shorten(str(exc), 4000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
