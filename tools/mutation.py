"""Mutation testing of the core pure modules (`python -m tools.mutation`): mutmut plants small bugs one at a time and runs
the fast test tier's tests that execute the mutated function; reports/mutation.json holds the score per module.

The targets are fixed here and mirrored by `[tool.mutmut] only_mutate` in pyproject.toml (a test keeps the two equal).
Surviving mutants judged equivalent (no test could tell them apart, because the behaviour is the same) are listed
with the reason in tests/mutation_equivalents.yaml and left out of the denominator. The report records the sha256 of
every target file, so a test can tell when the committed report no longer describes the code.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import Field

from geno_pipeline.checksums import sha256_file
from geno_pipeline.documents import Document
from geno_pipeline.errors import GenoPipelineError
from geno_pipeline.jsonio import read_json, write_json
from geno_pipeline.layout import Layout
from geno_pipeline.readers import read_json_text, read_yaml
from tools import run_tool

__all__ = [
    "EQUIVALENTS_FILE",
    "TARGETS",
    "TARGET_SCORE",
    "MutationReport",
    "Target",
    "build_report",
    "carry_over",
    "mutant_globs",
    "read_exit_codes",
    "run_mutation_cli",
    "status_of",
    "target_of",
]

TARGET_SCORE = 0.90
EQUIVALENTS_FILE = "tests/mutation_equivalents.yaml"
MUTANTS_DIR = "mutants"
Status = Literal["killed", "timeout", "survived", "no tests", "skipped", "suspicious", "segfault", "not checked"]


@dataclass(frozen=True)
class Target:
    """A core module to mutate: a whole file, or only the named functions of one."""

    name: str
    path: str
    functions: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The module's dotted name as mutmut names its mutants (a package's `__init__.py` is the package)."""
        return self.path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


TARGETS: tuple[Target, ...] = (
    Target("schedule", "geno_pipeline/training/schedule.py"),
    Target("sampling", "geno_pipeline/training/sampling.py"),
    Target("tuples", "geno_pipeline/training/tuples.py"),
    Target("edits", "geno_pipeline/data/edits.py"),
    Target("collapse", "geno_pipeline/training/collapse.py"),
    Target("checksums", "geno_pipeline/checksums.py"),
    Target("release_verify", "geno_pipeline/release/verify.py"),
    Target(
        "checkpoint_bindings",
        "geno_pipeline/training/checkpoint_load.py",
        (
            "tensor_specs",
            "params_differences",
            "_binding_problems",
            "shape_problems",
            "_content_problems",
            "_hyper_problems",
            "_state_problems",
            "_value_problems",
            "load_checkpoint",
        ),
    ),
    Target("config_checks", "geno_pipeline/config/checks.py"),
    Target("config_sections", "geno_pipeline/config/sections.py"),
    Target("config_rules", "geno_pipeline/config/rules.py"),
    Target("config_stages", "geno_pipeline/config/stages.py"),
    Target("config_loading", "geno_pipeline/config/loading.py"),
    Target("windows", "geno_pipeline/data/windows.py"),
    Target(
        "distributed_split",
        "geno_pipeline/distributed/__init__.py",
        ("micro_batch_slices", "shard_range", "ordered_sum", "lazy_tree_sum", "tree_sum", "tree_fits"),
    ),
)

# mutmut's verdicts by the exit code of the test run (mutmut/stats.py, 3.8); anything else is "suspicious"
_STATUS: dict[int | None, Status] = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
    36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
    None: "not checked",
}  # fmt: skip


def status_of(exit_code: int | None) -> Status:
    """mutmut's verdict for a mutant whose test run exited with `exit_code` (None: not run)."""
    return _STATUS.get(exit_code, "suspicious")


def mutant_globs(targets: Iterable[Target] = TARGETS) -> list[str]:
    """`mutmut run` name patterns selecting exactly the targets' mutants (mutmut names a function f's mutants
    `<module>.x_f__mutmut_<n>` and a method's `<module>.xǁClassǁm__mutmut_<n>`)."""
    out: list[str] = []
    for t in targets:
        out += [f"{t.module}.x_{f}__mutmut_*" for f in t.functions] if t.functions else [f"{t.module}.*"]
    return out


def target_of(mutant: str, targets: Iterable[Target] = TARGETS) -> Target | None:
    """The target a mutant name belongs to, or None."""
    for t in targets:
        rest = mutant.removeprefix(t.module + ".")
        if rest == mutant or "." in rest:
            continue
        if not t.functions or any(rest.startswith(f"x_{f}__mutmut_") for f in t.functions):
            return t
    return None


def read_exit_codes(mutants_dir: Path) -> dict[str, int | None]:
    """mutant name -> exit code of its test run, from mutmut's `<file>.py.meta` files."""
    out: dict[str, int | None] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        document = read_json_text(meta, error=GenoPipelineError, fix="rerun `python -m tools.mutation`")
        if not isinstance(document, dict) or not isinstance(document.get("exit_code_by_key"), dict):
            raise GenoPipelineError(f"{meta}: no exit_code_by_key mapping in this mutmut result; fix: rerun `python -m tools.mutation`")
        out.update(document["exit_code_by_key"])
    return out


class ModuleScore(Document):
    """One target's mutants by verdict."""

    name: str
    """Target name."""
    path: str
    """Mutated file."""
    functions: list[str]
    """Only these functions are mutated (empty: the whole file)."""
    source_sha256: str
    """sha256 of the file when it was mutated."""
    mutants: int = Field(ge=0)
    """Mutants generated."""
    killed: int = Field(ge=0)
    """Mutants some test failed on."""
    timeout: int = Field(ge=0)
    """Mutants whose tests ran past mutmut's time limit (counted as detected)."""
    survived: int = Field(ge=0)
    """Mutants every test passed on, equivalent ones included."""
    no_tests: int = Field(ge=0)
    """Mutants in code that no fast-tier test runs (counted as not detected)."""
    other: int = Field(ge=0)
    """Skipped, suspicious or crashed mutants (counted as not detected)."""
    unchecked: int = Field(ge=0)
    """Mutants not run yet (`python -m tools.mutation --target NAME` runs one module)."""
    equivalent: int = Field(ge=0)
    """Survivors judged equivalent (tests/mutation_equivalents.yaml), left out of the score."""
    score: float | None = Field(ge=0, le=1)
    """(killed + timeout) / (mutants - equivalent); 1.0 when nothing is left; null until every mutant was run."""
    carried_over: bool = False
    """The figures are the previous report's: none of this module's mutants were run in this mutants/ directory (a fresh
    clone has none), and its file's sha256 and function selection are the ones that report scored."""


class Survivor(Document):
    """A mutant no test detected."""

    mutant: str
    """mutmut's name for it (`mutmut show NAME` prints the change)."""
    target: str
    """Target name."""
    status: str
    """mutmut's verdict."""
    equivalent_reason: str | None
    """Why it is equivalent, or null when it is a gap in the tests."""


class MutationReport(Document):
    """reports/mutation.json: `python -m tools.mutation`."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    tool: str
    """Mutation tool and version."""
    tests: str
    """Which tests run against each mutant."""
    target_score: float
    """Required score on every target and in total."""
    modules: list[ModuleScore]
    """Score per target."""
    total_mutants: int = Field(ge=0)
    """Mutants over all targets."""
    total_detected: int = Field(ge=0)
    """Killed plus timed out."""
    total_equivalent: int = Field(ge=0)
    """Survivors judged equivalent."""
    total_unchecked: int = Field(ge=0)
    """Mutants not run yet."""
    complete: bool
    """Every mutant of every target was run."""
    total_score: float | None = Field(ge=0, le=1)
    """total_detected / (total_mutants - total_equivalent); null until complete."""
    target_met: bool
    """Complete, and every module's score and the total are at least target_score."""
    survivors: list[Survivor]
    """Every mutant not detected, equivalent or not."""
    stale_equivalents: list[str]
    """Names in the equivalents file that are no longer undetected mutants (remove them)."""


def _score(detected: int, mutants: int, equivalent: int) -> float:
    denominator = mutants - equivalent
    return 1.0 if denominator <= 0 else detected / denominator


def _module_score(target: Target, mine: Mapping[str, Status], equivalents: Mapping[str, str], sha256: str) -> ModuleScore:
    count = {s: sum(1 for v in mine.values() if v == s) for s in ("killed", "timeout", "survived", "no tests", "not checked")}
    equivalent = sum(1 for name, s in mine.items() if s == "survived" and name in equivalents)
    complete = count["not checked"] == 0 and bool(mine)
    return ModuleScore(
        name=target.name, path=target.path, functions=list(target.functions), source_sha256=sha256, mutants=len(mine),
        killed=count["killed"], timeout=count["timeout"], survived=count["survived"], no_tests=count["no tests"],
        other=len(mine) - sum(count.values()), unchecked=count["not checked"], equivalent=equivalent,
        score=_score(count["killed"] + count["timeout"], len(mine), equivalent) if complete else None,
    )  # fmt: skip


def build_report(
    exit_codes: Mapping[str, int | None], equivalents: Mapping[str, str], sha256_by_path: Mapping[str, str], *, tool: str
) -> MutationReport:
    """The report from mutmut's exit codes and the equivalents list (mutant name -> reason); pure."""
    owner = {name: target for name in exit_codes if (target := target_of(name)) is not None}
    statuses = {name: status_of(exit_codes[name]) for name in owner}
    modules = [_module_score(t, {n: s for n, s in statuses.items() if owner[n] == t}, equivalents, sha256_by_path[t.path]) for t in TARGETS]
    survivors = [
        Survivor(
            mutant=name, target=owner[name].name, status=status, equivalent_reason=equivalents.get(name) if status == "survived" else None
        )
        for name, status in sorted(statuses.items())
        if status not in ("killed", "timeout", "not checked")
    ]
    stale = sorted(n for n in equivalents if statuses.get(n) not in ("survived", "not checked"))
    return _assemble(tool, modules, survivors, stale)


def _assemble(tool: str, modules: list[ModuleScore], survivors: list[Survivor], stale: list[str]) -> MutationReport:
    """The report with its totals summed from `modules`."""
    mutants = sum(m.mutants for m in modules)
    detected = sum(m.killed + m.timeout for m in modules)
    equivalent = sum(m.equivalent for m in modules)
    complete = all(m.score is not None for m in modules)
    total = _score(detected, mutants, equivalent) if complete else None
    met = total is not None and total >= TARGET_SCORE and all(m.score is not None and m.score >= TARGET_SCORE for m in modules)
    return MutationReport(
        tool=tool, tests="the fast tier (pytest -m 'not slow'): the tests that execute the mutated function",
        target_score=TARGET_SCORE, modules=modules, total_mutants=mutants, total_detected=detected, total_equivalent=equivalent,
        total_unchecked=sum(m.unchecked for m in modules), complete=complete, total_score=total, target_met=met,
        survivors=survivors, stale_equivalents=stale,
    )  # fmt: skip


def carry_over(report: MutationReport, previous: MutationReport, equivalents: Mapping[str, str]) -> MutationReport:
    """`report` with every module none of whose mutants were run here taken from `previous`, where that scored it with
    the same file sha256 and function selection; its survivors come along, judged against today's `equivalents`
    (an entry for one of its mutants that did not survive there is stale); pure."""
    old = {m.name: m for m in previous.modules}
    same = {
        m.name
        for m in report.modules
        if m.mutants == m.unchecked
        and (p := old.get(m.name)) is not None
        and p.score is not None
        and (p.path, p.functions, p.source_sha256) == (m.path, m.functions, m.source_sha256)
    }
    if not same:
        return report
    kept = [
        s.model_copy(update={"equivalent_reason": equivalents.get(s.mutant) if s.status == "survived" else None})
        for s in previous.survivors
        if s.target in same
    ]
    modules = []
    for m in report.modules:
        if m.name not in same:
            modules.append(m)
            continue
        p = old[m.name]
        equivalent = sum(1 for s in kept if s.target == m.name and s.equivalent_reason is not None)
        score = _score(p.killed + p.timeout, p.mutants, equivalent)
        modules.append(p.model_copy(update={"equivalent": equivalent, "score": score, "carried_over": True}))
    survivors = sorted([s for s in report.survivors if s.target not in same] + kept, key=lambda s: s.mutant)
    surviving = {s.mutant for s in kept if s.status == "survived"}
    stale = set(report.stale_equivalents) | {
        n for n in equivalents if (t := target_of(n)) is not None and t.name in same and n not in surviving
    }
    return _assemble(report.tool, modules, survivors, sorted(stale))


def read_equivalents(path: Path) -> dict[str, str]:
    """tests/mutation_equivalents.yaml: mutant name -> reason (an absent file is an empty list)."""
    if not path.is_file():
        return {}
    fix = "edit it to `NAME: why it is equivalent`"
    data = read_yaml(path, error=GenoPipelineError, fix=fix)
    data = {} if data is None else data
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()):
        raise GenoPipelineError(f"{path}: must map each mutant name to a non-empty reason; fix: {fix}")
    return data


def configured_targets(pyproject: Path) -> list[str]:
    """`[tool.mutmut] only_mutate` of pyproject.toml."""
    import tomllib

    return list(tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"])


def _run_mutmut(root: Path, max_children: int | None, targets: tuple[Target, ...]) -> None:
    if importlib.util.find_spec("mutmut") is None:
        raise GenoPipelineError("mutmut is not installed; fix: pip install -c requirements.lock -e '.[dev]'")
    wanted = [t.path for t in TARGETS]
    if configured_targets(root / "pyproject.toml") != wanted:
        raise GenoPipelineError(f"{root / 'pyproject.toml'}: [tool.mutmut] only_mutate must list {wanted}; fix: copy that list there")
    command = [
        sys.executable,
        "-m",
        "mutmut",
        "run",
        *(["--max-children", str(max_children)] if max_children else []),
        *mutant_globs(targets),
    ]
    names = ", ".join(t.name for t in targets)
    print(f"mutation: running mutmut on {names} (minutes per module on 2 cores; results already in mutants/ are kept) ...", flush=True)
    code = subprocess.call(command, cwd=root)
    print(flush=True)
    if code != 0:
        raise GenoPipelineError(f"mutmut exited {code}; fix: see its output above (the unmutated fast tier must pass)")


def select_targets(names: list[str] | None) -> tuple[Target, ...]:
    """The targets named (all when None); an unknown name is an error naming the known ones."""
    if not names:
        return TARGETS
    known = {t.name: t for t in TARGETS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GenoPipelineError(f"--target {unknown[0]}: no such target; fix: use one of {', '.join(known)}")
    return tuple(known[n] for n in dict.fromkeys(names))


def run_mutation_cli(layout: Layout, *, report_only: bool, max_children: int | None, targets: list[str] | None = None) -> int:
    """Run mutmut (unless `report_only`) on the named targets (default all), write reports/mutation.json from every result
    in mutants/, print the scores; exit 1 unless every module was run and meets the target."""
    root = layout.root
    chosen = select_targets(targets)
    if not report_only:
        _run_mutmut(root, max_children, chosen)
    exit_codes = read_exit_codes(root / MUTANTS_DIR)
    if not any(c is not None and target_of(n) is not None for n, c in exit_codes.items()):
        raise GenoPipelineError(f"no mutmut results under {root / MUTANTS_DIR}; fix: run `python -m tools.mutation`")
    equivalents = read_equivalents(root / EQUIVALENTS_FILE)
    sha = {t.path: sha256_file(root / t.path) for t in TARGETS}
    report = build_report(exit_codes, equivalents, sha, tool=f"mutmut {metadata.version('mutmut')}")
    if layout.mutation_report.is_file():  # modules not run here keep the last report's figures while their files are unchanged
        fix = "restore it from git, or delete it and run every module (`python -m tools.mutation`)"
        previous = MutationReport.model_validate(read_json(layout.mutation_report, schema="mutation", error=GenoPipelineError, fix=fix))
        report = carry_over(report, previous, equivalents)
    write_json(layout.mutation_report, report, schema="mutation")
    for line in summary_lines(report):
        print(f"mutation: {line}")
    print(f"mutation: wrote {layout.rel(layout.mutation_report)}")
    return 0 if report.target_met else 1


def summary_lines(report: MutationReport) -> list[str]:
    """The per-module table, the total and the undetected mutants."""
    lines = [f"{'module':<20} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} {'equiv':>5} {'score':>7}"]
    for m in report.modules:
        score = f"{m.score:>7.1%}" if m.score is not None else f"not run: {m.unchecked} of {m.mutants} mutants unchecked"
        score += " (carried over: file unchanged, not run here)" if m.carried_over else ""
        lines.append(f"{m.name:<20} {m.mutants:>7} {m.killed:>6} {m.timeout:>7} {m.survived:>8} {m.no_tests:>8} {m.equivalent:>5} {score}")
    total = f"{report.total_score:.1%}" if report.total_score is not None else f"incomplete ({report.total_unchecked} mutants unchecked)"
    lines.append(
        f"total: {report.total_mutants} mutants, {report.total_detected} detected (killed + timeout), {report.total_equivalent} "
        f"equivalent: {total}; target {report.target_score:.0%} per module and in total: {'met' if report.target_met else 'NOT MET'}"
    )
    for s in report.survivors:
        lines.append(f"  {s.status}: {s.mutant}" + (f"  (equivalent: {s.equivalent_reason})" if s.equivalent_reason else ""))
    lines += [f"  stale equivalent entry: {name}" for name in report.stale_equivalents]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.mutation`."""
    p = argparse.ArgumentParser(
        prog="python -m tools.mutation",
        description="Plant small bugs one at a time (mutmut) in the core pure modules: schedule, sampling, tuples, edits, "
        "collapse, checksums, release verify, the checkpoint binding checks, the params validation (config), the window "
        "draw and the micro-batch split and ordered sums (distributed); run the fast test tier's "
        "tests that execute each mutated function; write the score per module to reports/mutation.json and print it. "
        "Survivors judged equivalent are listed with a reason in tests/mutation_equivalents.yaml. Needs the dev extra; "
        "takes tens of minutes on 2 cores. mutmut keeps its copy and results in mutants/; this command names the targeted "
        "modules' mutants, so it runs all of them again (`--report-only` scores the results already there). A module "
        "none of whose mutants were run in mutants/ (a fresh clone has none) keeps the figures of the existing report "
        "while its file is unchanged, marked carried over. "
        "Exit 1 unless every module was scored and it and the total score at least 90%.",
    )
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--report-only", action="store_true", help="do not run mutmut: score the results already in ROOT/mutants/")
    p.add_argument("--max-children", type=int, default=None, help="parallel mutant runs (default: the CPU count)")
    p.add_argument(
        "--target",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this module (repeatable): schedule, sampling, tuples, edits, collapse, checksums, release_verify, "
        "checkpoint_bindings, config_checks, config_sections, config_rules, config_stages, config_loading, windows, "
        "distributed_split; the report "
        " still scores every module from the results in mutants/",
    )

    def handle(args: argparse.Namespace) -> int:
        return run_mutation_cli(
            Layout.for_root(args.root), report_only=args.report_only, max_children=args.max_children, targets=args.target
        )

    return run_tool("mutation", p, handle, argv)


if __name__ == "__main__":
    sys.exit(main())
