"""`geno-pipeline repro-check`: are the recomputed stage outputs bit-identical to the committed dvc.lock?

Hashes are computed the way DVC records them (md5 of each file; for a directory, md5 of the sorted
JSON list of {md5, relpath} plus `.dir`), so no DVC cache is needed. Per-file detail comes from the
committed reports (train.json and release.json list every file with its sha256).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

from geno_pipeline.checksums import sha256_file
from geno_pipeline.documents import Document
from geno_pipeline.errors import ReproCheckError
from geno_pipeline.jsonio import read_json, write_json
from geno_pipeline.layout import Layout

__all__ = ["CHECKED_STAGES", "ReproCheckReport", "dvc_md5", "run_repro_check", "run_repro_check_cli"]

CHECKED_STAGES = ("data", "train", "sweep", "release")


class OutputCheck(Document):
    """One declared output of a stage."""

    path: str
    """Output path as in dvc.lock."""
    expected_md5: str | None
    """md5 recorded in the committed dvc.lock."""
    actual_md5: str | None
    """md5 recomputed from the workspace (null when missing)."""
    status: Literal["reproduced", "changed", "missing"]
    """Verdict for this output."""


class StageCheck(Document):
    """Verdict for one stage."""

    stage: str
    """Stage name."""
    verdict: Literal["reproduced", "changed"]
    """reproduced when every output matches."""
    outputs: list[OutputCheck]
    """Per-output results."""
    changed_files: list[str]
    """Files that differ from the committed reference, where the reference lists files."""
    field_differences: list[str]
    """For committed JSON and CSV outputs: which field or line differs (`reports/train.json: final_train_loss`)."""


class ReproCheckReport(Document):
    """reports/repro_check.json."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    lock_ref: str
    """Git revision whose dvc.lock was the reference."""
    ok: bool
    """Every checked stage reproduced."""
    stages: list[StageCheck]
    """data, train, sweep and release."""
    environment_differences: list[str]
    """Fingerprint fields that differ from the reference run (torch version, device kind, threads, ...)."""
    changed_inputs: list[str]
    """Tracked inputs (params, code, lock files, genomes) that differ from the reference revision."""
    explanation: str
    """One sentence for people."""


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_md5(path: Path) -> str | None:
    """The md5 DVC records for a file or directory output (None when absent)."""
    path = Path(path)
    if path.is_file():
        return _md5_file(path)
    if not path.is_dir():
        return None
    entries = [
        {"md5": _md5_file(p), "relpath": p.relative_to(path).as_posix()}
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8"), usedforsecurity=False).hexdigest() + ".dir"


def _git_show_bytes(root: Path, ref: str, path: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def _git_show(root: Path, ref: str, path: str) -> str | None:
    """A committed text file at `ref` (None when absent or not UTF-8)."""
    data = _git_show_bytes(root, ref, path)
    try:
        return data.decode("utf-8") if data is not None else None
    except UnicodeDecodeError:
        return None


def _reference_files(layout: Layout, ref: str, stage: str) -> dict[str, str]:
    """path -> sha256 of the reference run's files, from the committed reports (both list them as `path`)."""
    report, key = {"train": (layout.train_report, "artifacts"), "release": (layout.release_report, "files")}.get(stage, (None, ""))
    text = _git_show(layout.root, ref, layout.rel(report)) if report is not None else None
    return {a["path"]: a["sha256"] for a in json.loads(text)[key]} if text else {}


def _environment_differences(layout: Layout, ref: str) -> list[str]:
    text = _git_show(layout.root, ref, layout.rel(layout.train_report))
    current = layout.environment
    if not text or not current.is_file():
        return []
    want: dict[str, Any] = json.loads(text)["environment"]
    have: dict[str, Any] = read_json(current, error=ReproCheckError, fix="rerun `geno-pipeline preflight`")
    return [f"{k}: reference {want.get(k)!r}, here {have.get(k)!r}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]


def _keyed_by_path(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in value)


def json_differences(want: Any, have: Any, prefix: str = "") -> list[str]:
    """Paths where two JSON values differ: `a.b`, `files[i]`, or `artifacts[<path>].sha256` for lists of files."""
    if isinstance(want, dict) and isinstance(have, dict):
        out: list[str] = []
        for key in sorted(set(want) | set(have)):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            out += [dotted] if key not in want or key not in have else json_differences(want[key], have[key], dotted)
        return out
    if _keyed_by_path(want) and _keyed_by_path(have):  # file lists: name the file, not its index
        a, b = {e["path"]: e for e in want}, {e["path"]: e for e in have}
        out = []
        for path in sorted(set(a) | set(b)):
            item = f"{prefix}[{path}]"
            out += [item] if path not in a or path not in b else json_differences(a[path], b[path], item)
        return out
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return [d for i, (x, y) in enumerate(zip(want, have, strict=True)) for d in json_differences(x, y, f"{prefix}[{i}]")]
    return [] if want == have else [prefix or "<root>"]


def _file_differences(root: Path, ref: str, path: str) -> list[str]:
    """`path: field` (JSON), `path: line N` (text) or `path: differs` (binary, e.g. a PNG chart) for a committed file
    that differs from its reference version."""
    committed = _git_show_bytes(root, ref, path)
    current = root / path
    if committed is None or not current.is_file():
        return []
    try:
        data = current.read_bytes()
    except OSError:
        return [f"{path}: unreadable"]
    if data == committed:
        return []
    try:
        text, reference = data.decode("utf-8"), committed.decode("utf-8")
    except UnicodeDecodeError:
        return [f"{path}: differs"]
    if path.endswith(".json"):
        try:
            fields = sorted(json_differences(json.loads(reference), json.loads(text)), key=lambda f: f.count("["))  # scalars first
        except json.JSONDecodeError:
            return [f"{path}: not valid JSON"]
        shown = [f"{path}: {f}" for f in fields[:8]]
        return shown + ([f"{path}: ... and {len(fields) - 8} more fields"] if len(fields) > 8 else [])
    lines = [i for i, (a, b) in enumerate(zip(reference.splitlines(), text.splitlines(), strict=False), start=1) if a != b]
    first = lines[0] if lines else min(len(reference.splitlines()), len(text.splitlines())) + 1
    return [f"{path}: line {first} differs"]


def _committed_files(root: Path, ref: str, out: str) -> list[str]:
    proc = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref, "--", out], cwd=root, capture_output=True, text=True)
    return proc.stdout.split() if proc.returncode == 0 else []


def changed_inputs(root: Path, ref: str) -> list[str]:
    """Tracked pipeline inputs that differ between `ref` and the working tree."""
    inputs = ["params.yaml", "dvc.yaml", "geno_pipeline", "pyproject.toml", "requirements.lock", "genomes", "examples/genomes"]
    proc = subprocess.run(["git", "diff", "--name-only", ref, "--", *inputs], cwd=root, capture_output=True, text=True)
    return sorted(set(proc.stdout.split())) if proc.returncode == 0 else []


def _explain(ok: bool, env: list[str], inputs: list[str], stages: list[StageCheck]) -> str:
    if ok:
        return "every data, train and release output is bit-identical to the committed dvc.lock"
    if env:
        return (
            "outputs differ and the environment fingerprint differs from the reference run ("
            + "; ".join(env)
            + "): bit-identity is only promised within one environment class; compare with a reference run on a machine "
            "of this class (a second fresh clone here, as CI does), or commit this run's dvc.lock and reports as the reference"
        )
    first = [d for s in stages for d in s.field_differences][:4] or [f for s in stages for f in s.changed_files][:4]
    what = "; ".join(first)
    if inputs:
        return f"outputs differ because these inputs changed since the reference: {', '.join(inputs)} (first differences: {what})"
    return (
        f"outputs differ in the same environment class with unchanged params, code and genomes (first differences: {what}); "
        "this is a reproducibility bug or a machine outside the reference's class (CPU instruction set, BLAS)"
    )


def run_repro_check(layout: Layout, *, lock_ref: str = "HEAD") -> ReproCheckReport:
    """Compare the workspace's outputs of data/train/release with the committed dvc.lock."""
    root = layout.root
    text = _git_show(root, lock_ref, "dvc.lock")
    if text is None:
        raise ReproCheckError(f"no dvc.lock committed at {lock_ref}; fix: commit dvc.lock from a reference run, or pass --lock-ref")
    lock = yaml.safe_load(text) or {}
    stages = []
    for name in CHECKED_STAGES:
        entry = lock.get("stages", {}).get(name)
        if entry is None:
            raise ReproCheckError(f"the committed dvc.lock has no '{name}' stage; fix: run `dvc repro` and commit dvc.lock")
        outputs = []
        for out in entry.get("outs", []):
            actual = dvc_md5(root / out["path"])
            status = "missing" if actual is None else ("reproduced" if actual == out.get("md5") else "changed")
            outputs.append(OutputCheck(path=out["path"], expected_md5=out.get("md5"), actual_md5=actual, status=status))  # type: ignore[arg-type]
        changed_files: list[str] = []
        if any(o.status != "reproduced" for o in outputs):
            for path, sha in sorted(_reference_files(layout, lock_ref, name).items()):
                file = root / path
                if not file.is_file() or sha256_file(file) != sha:
                    changed_files.append(path)
            if not changed_files:
                changed_files = [o.path for o in outputs if o.status != "reproduced"]
        fields = [
            d
            for o in outputs
            if o.status == "changed"
            for f in _committed_files(root, lock_ref, o.path)
            for d in _file_differences(root, lock_ref, f)
        ]
        verdict = "reproduced" if all(o.status == "reproduced" for o in outputs) else "changed"
        stages.append(StageCheck(stage=name, verdict=verdict, outputs=outputs, changed_files=changed_files, field_differences=fields))  # type: ignore[arg-type]
    ok = all(s.verdict == "reproduced" for s in stages)
    env = _environment_differences(layout, lock_ref)
    inputs = [] if ok else changed_inputs(root, lock_ref)
    return ReproCheckReport(
        lock_ref=lock_ref,
        ok=ok,
        stages=stages,
        environment_differences=env,
        changed_inputs=inputs,
        explanation=_explain(ok, env, inputs, stages),
    )


def run_repro_check_cli(layout: Layout, *, lock_ref: str) -> int:
    """Print one verdict line per stage, write reports/repro_check.json; exit 7 on a mismatch."""
    report = run_repro_check(layout, lock_ref=lock_ref)
    for stage in report.stages:
        if stage.verdict == "reproduced":
            print(f"repro-check: {stage.stage}: reproduced ({', '.join(o.path for o in stage.outputs)})")
        else:
            print(f"repro-check: {stage.stage}: CHANGED: {', '.join(stage.changed_files)}")
            for difference in stage.field_differences:
                print(f"repro-check:   {difference}")
    print(f"repro-check: {report.explanation}")
    write_json(layout.repro_check_report, report, schema="repro_check")
    if not report.ok:
        print("repro-check: outputs do not match the committed dvc.lock", file=sys.stderr)
        return 7
    return 0
