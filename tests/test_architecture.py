"""Structure guards: dvc.yaml names exactly the Layout's paths, no function over 80 lines, no import cycle, no upward import."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from geno_pipeline.layout import Layout

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "geno_pipeline"
MAX_FUNCTION_LINES = 80

# Lower layers never import higher ones. Same layer may import each other (acyclically).
LAYERS: dict[str, int] = {
    "geno_pipeline.errors": 0,
    "geno_pipeline.documents": 0,
    "geno_pipeline.canonical": 0,
    "geno_pipeline.fsio": 0,
    "geno_pipeline.readers": 0,  # the boundary for untrusted bytes
    "geno_pipeline.yamlio": 0,
    "geno_pipeline.checksums": 0,
    "geno_pipeline.seeding": 0,
    "geno_pipeline.source": 0,
    "geno_pipeline.tensorfile": 0,
    "geno_pipeline.layout": 0,
    "geno_pipeline.version": 0,
    "geno_pipeline.data.edits": 0,  # the edit vocabulary: config validates against it
    "geno_pipeline.devices": 0,  # which device a job uses: pure, shared by train, preflight and its torch probe process
    "geno_pipeline.torchflags": 0,  # the determinism settings: train applies them, the torch probe process reads them back
    "geno_pipeline.torchprobe": 0,  # preflight's torch probe process: stdlib, torch and the two modules above only
    "geno_pipeline.processes": 0,  # process lifetime (die with the parent): the launcher's workers, the checkpoint writer
    "geno_pipeline.workspace": 0,  # the workspace lock and SIGTERM as an interrupt: stdlib and errors only
    "geno_pipeline.hostmem": 0,  # memory this process may still use (meminfo, cgroup): the data and train budgets
    "geno_pipeline.openmp": 0,  # how OpenMP threads wait, set by the command line before torch loads: stdlib only
    "geno_pipeline.schemas": 1,  # the registry names document models by string; it imports none of them
    "geno_pipeline.jsonio": 1,
    "geno_pipeline.runtime_report": 1,
    "geno_pipeline.distributed": 1,  # the job, the batch split and the process group: torch and errors only
    "geno_pipeline.config": 2,
    "geno_pipeline.environment": 2,
    "geno_pipeline.data": 3,
    "geno_pipeline.training": 4,
    "geno_pipeline.preflight": 5,
    "geno_pipeline.sweep": 5,  # reruns the train stage per seed; release gates on its report
    "geno_pipeline.release": 6,
    "geno_pipeline.cli": 7,
    "geno_pipeline.repro_check": 7,
    "geno_pipeline.validate": 7,
    "geno_pipeline.__main__": 7,
    "geno_pipeline": 7,  # the package's lazy load_released_model
    "tools": 8,  # the developer harnesses (bench, mutation, reliability): they import the pipeline, never the reverse
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
    return {_module_name(p): p for p in sorted(files) if "__pycache__" not in p.parts}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (function-level imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("geno_pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geno_pipeline"):
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_architecture_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_architecture_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_architecture_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [
        f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})"
        for mod, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if _layer(dep) > _layer(mod)
    ]
    assert upward == []


def test_architecture_named_boundaries() -> None:
    graph = import_graph()
    data_to_training = [(m, d) for m, ds in graph.items() if m.startswith("geno_pipeline.data") for d in ds if "training" in d]
    stages = ("geno_pipeline.data", "geno_pipeline.preflight", "geno_pipeline.training", "geno_pipeline.release")
    env_to_stage = [d for d in graph["geno_pipeline.environment"] if d.startswith(stages)]
    release_to_training_stage = [d for d in graph["geno_pipeline.release.stage"] if d.startswith("geno_pipeline.training.stage")]
    assert (data_to_training, env_to_stage, release_to_training_stage) == ([], [], [])


def test_architecture_the_package_holds_only_the_pipeline() -> None:
    """The harnesses live in tools/: nothing in geno_pipeline/ imports them, and the package has none of them."""
    graph = import_graph()
    assert [(m, d) for m, ds in graph.items() if m.startswith("geno_pipeline") for d in ds if d.startswith("tools")] == []
    harness = {"bench", "benchtrain", "benchio", "benchwork", "mutation", "reliability"}
    assert [p for p in PACKAGE.rglob("*.py") if p.stem in harness] == []


def test_architecture_every_module_has_a_layer() -> None:
    for module in _modules():
        assert _layer(module) >= 0


def test_architecture_no_function_longer_than_80_lines() -> None:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def _dvc_paths(entries: list[object]) -> tuple[str, ...]:
    return tuple(sorted(next(iter(e)) if isinstance(e, dict) else str(e) for e in entries))


def test_architecture_dvc_yaml_deps_and_outs_equal_layout() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    expected = Layout.for_root(ROOT).dvc_stages()
    assert sorted(stages) == sorted(expected)
    for name, files in expected.items():
        stage = stages[name]
        assert _dvc_paths(stage.get("deps", [])) == tuple(sorted(files.deps)), name
        assert _dvc_paths(stage.get("outs", []) + stage.get("metrics", [])) == tuple(sorted(files.outs)), name


def test_architecture_layout_names_every_path_under_its_root(tmp_path: Path) -> None:
    layout = Layout.for_root(tmp_path)
    for files in layout.dvc_stages().values():
        for rel in (*files.deps, *files.outs):
            assert not Path(rel).is_absolute() and ".." not in Path(rel).parts
    assert layout.log("train.log") == tmp_path / "artifacts" / "train" / "train.log"
