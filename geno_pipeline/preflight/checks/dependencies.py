"""Dependency checks: a real import, the installed version, and the minimum from pyproject.toml."""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from geno_pipeline.preflight.checks.base import Finding, problem
from geno_pipeline.preflight.documents import DependencyProbe, Severity

__all__ = [
    "DEPENDENCIES",
    "DependencyCheck",
    "DependencyProbeFn",
    "DependencySpec",
    "declared_minimums",
    "dependency_checks",
    "dependency_facts",
    "probe_dependency",
    "version_at_least",
]


@dataclass(frozen=True)
class DependencySpec:
    """A dependency to probe."""

    import_name: str
    package: str
    required: bool = True
    minimum_version: str | None = None


DependencyProbeFn = Callable[[DependencySpec], DependencyProbe]

# (import name, distribution, required): pynvml is only needed to see GPUs, so it is optional
DEPENDENCIES: tuple[tuple[str, str, bool], ...] = (
    ("torch", "torch", True),
    ("numpy", "numpy", True),
    ("pydantic", "pydantic", True),
    ("jsonschema", "jsonschema", True),
    ("safetensors", "safetensors", True),
    ("pynvml", "nvidia-ml-py", False),
    ("yaml", "PyYAML", True),
    ("dvc", "dvc", True),
)

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.\-+]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_minimums(root: Path | None = None) -> dict[str, str]:
    """Minimum versions (`name>=x`) declared by the project, keyed by normalised distribution name.

    Read from pyproject.toml under `root` when present, else from the installed metadata.
    """
    lines: list[str] = []
    pyproject = Path(root) / "pyproject.toml" if root is not None else None
    if pyproject is not None and pyproject.is_file():
        import tomllib

        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        lines = list(data.get("project", {}).get("dependencies", []))
    else:
        try:
            lines = [r for r in (metadata.requires("geno-pipeline") or []) if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            lines = []
    out = {}
    for line in lines:
        match = _REQ.match(line)
        if match:
            out[_norm(match.group(1))] = match.group(2)
    return out


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def version_at_least(version: str, minimum: str) -> bool:
    """Compare release numbers (`2.13.0+cpu` >= `2.4`); local/pre-release tags are ignored."""
    a, b = _release(version), _release(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def probe_dependency(spec: DependencySpec) -> DependencyProbe:
    """Import the module for real; any exception (missing shared library included) becomes the result."""
    start = time.perf_counter()
    available, reason = True, "ok"
    try:
        importlib.import_module(spec.import_name)
    except Exception as exc:  # ImportError, OSError from a missing .so, or anything raised at import
        available, reason = False, f"import failed: {type(exc).__name__}: {exc}".strip()
        sys.modules.pop(spec.import_name, None)
    return dependency_facts(spec, available=available, reason=reason, duration_ms=(time.perf_counter() - start) * 1000.0)


def dependency_facts(spec: DependencySpec, *, available: bool, reason: str, duration_ms: float) -> DependencyProbe:
    """The probe for an import done here or elsewhere (torch is imported in preflight's torch probe process)."""
    try:
        version: str | None = metadata.version(spec.package)
    except metadata.PackageNotFoundError:
        version = None
    version_ok: bool | None = None
    if version is not None and spec.minimum_version is not None:
        version_ok = version_at_least(version, spec.minimum_version)
        if available and not version_ok:
            reason = f"version {version} is below the minimum {spec.minimum_version}"
    return DependencyProbe(
        import_name=spec.import_name,
        package=spec.package,
        required=spec.required,
        available=available,
        version=version,
        minimum_version=spec.minimum_version,
        version_ok=version_ok,
        reason=reason,
        duration_ms=round(duration_ms, 3),
    )


@dataclass(frozen=True)
class DependencyCheck:
    """`dependency.<module>`: importable, and not older than the declared minimum."""

    spec: DependencySpec
    probe_fn: DependencyProbeFn = probe_dependency

    @property
    def name(self) -> str:
        return f"dependency.{self.spec.import_name}"

    def probe(self) -> DependencyProbe:
        return self.probe_fn(self.spec)

    def assess(self, facts: DependencyProbe) -> list[Finding]:
        package = facts.package
        label = f"{package} {facts.version or '(not installed)'}"
        severity: Severity = "error" if facts.required else "warning"
        if not facts.available:
            code = "dependency.missing" if facts.version is None else "dependency.import_error"
            remedy = (
                "pip install -c requirements.lock -e . (installs every pinned dependency)"
                if code == "dependency.missing"
                else f"reinstall {package} (pip install --force-reinstall -c requirements.lock {package}); the import error names the cause"
            )
            return [problem(self.name, severity, code, self.spec.import_name, f"{label}: {facts.reason}", remedy)]
        if facts.version_ok is False:
            remedy = f"pip install -c requirements.lock '{package}>={facts.minimum_version}'"
            return [problem(self.name, severity, "dependency.too_old", self.spec.import_name, f"{label}: {facts.reason}", remedy)]
        minimum = f" (>= {facts.minimum_version})" if facts.minimum_version else ""
        return [Finding(self.name, "pass", f"{label}{minimum}")]


def dependency_checks(root: Path | None, probe_fn: DependencyProbeFn | None = None) -> list[DependencyCheck]:
    """One check per dependency, with the minimums the project declares."""
    minimums = declared_minimums(root)
    specs = [DependencySpec(i, p, r, minimums.get(p.lower().replace("_", "-"))) for i, p, r in DEPENDENCIES]
    return [DependencyCheck(spec, probe_fn or probe_dependency) for spec in specs]
