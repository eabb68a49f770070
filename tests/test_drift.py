"""Drift guards: schemas, params.yaml, dvc.yaml params lists, README commands and CI, CLI help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geno_pipeline.cli import EXIT_CODES, build_parser, main
from geno_pipeline.config import stage_params
from geno_pipeline.schemas import SCHEMA_MODELS, load_project_tools, schema_drift, schema_for
from tests.conftest import write_params

REPO = Path(__file__).resolve().parent.parent


def test_drift_committed_schemas_equal_generated() -> None:
    assert load_project_tools(REPO)  # the developer tools' report schemas are committed too
    assert {"bench", "bench_scaling", "mutation", "reliability"} <= set(SCHEMA_MODELS)
    assert schema_drift(REPO) == []
    assert main(["schemas", "--check", "--root", str(REPO)]) == 0


def test_drift_schemas_check_fails_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "--write", "--root", str(tmp_path)]) == 0
    path = tmp_path / "schemas" / "params.schema.json"
    path.write_text(path.read_text().replace("Seed of the synthetic genome", "Something else"))
    assert main(["schemas", "--check", "--root", str(tmp_path)]) == 7
    assert "params.schema.json: differs" in capsys.readouterr().err


def test_drift_every_schema_is_draft_2020_12_and_closed() -> None:
    from jsonschema import Draft202012Validator

    assert load_project_tools(REPO)  # the tools' report schemas too
    for name in SCHEMA_MODELS:
        schema = schema_for(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)  # valid against the draft 2020-12 metaschema (validator_for does not check)
        assert schema.get("additionalProperties") is False, name
        assert "schema_version" in schema["properties"] or name in ("params", "metrics_line", "collapse_line", "provenance"), name


def test_drift_dvc_params_equal_what_each_stage_reads() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    listed = {name: stage.get("params", []) for name, stage in dvc["stages"].items()}
    assert listed == stage_params()


def test_drift_dvc_stage_order_and_preflight_always_changed() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(dvc["stages"]) == ["data", "preflight", "train", "sweep", "release"]
    assert dvc["stages"]["preflight"]["always_changed"] is True
    assert "reports/preflight.json" not in str(dvc["stages"]["train"]["deps"])  # train depends on the fingerprint only
    assert "artifacts/preflight/environment.json" in dvc["stages"]["train"]["deps"]
    for stage in dvc["stages"].values():
        for dep in stage["deps"]:
            assert (REPO / dep).exists() or dep.startswith("artifacts/"), dep


def _readme_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)\n```$", (REPO / "README.md").read_text(), flags=re.M | re.S)


def test_drift_readme_opens_with_two_commands_and_ci_runs_the_test_one() -> None:
    blocks = _readme_blocks()
    assert len(blocks) >= 2
    main_cmd, test_cmd = blocks[0], blocks[1]
    assert main_cmd.endswith("&& dvc repro") and "\n" not in main_cmd
    assert "pytest" in test_cmd and "\n" not in test_cmd
    head = (REPO / "README.md").read_text().split("## ")[0]
    assert head.count("```bash") == 2  # exactly two commands before the first section
    extracted = subprocess.run(
        ["bash", "-c", "source <(sed -n '/^readme_command()/,/^}/p' .ci/run); readme_command 2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == test_cmd
    ci = (REPO / ".ci" / "run").read_text()
    assert 'bash -euo pipefail -c "$test_cmd"' in ci


def test_drift_readme_lists_exit_codes() -> None:
    text = (REPO / "README.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", text, flags=re.M), code


def test_drift_lock_pins_torch_and_every_runtime_dependency() -> None:
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^torch==2\.13\.0$", lock, flags=re.M)
    for name in ("numpy", "pydantic", "jsonschema", "safetensors", "nvidia-ml-py", "dvc", "PyYAML", "pytest", "hypothesis"):
        assert re.search(rf"^{re.escape(name)}==", lock, flags=re.M | re.I), name


def test_drift_gitignore_and_dvc_config() -> None:
    assert "/artifacts/" in (REPO / ".gitignore").read_text()
    assert re.search(r"analytics\s*=\s*false", (REPO / ".dvc" / "config").read_text())


@pytest.mark.parametrize(
    "command",
    [
        [],
        *[
            [c]
            for c in (
                "data",
                "preflight",
                "train",
                "sweep",
                "release",
                "verify",
                "sign",
                "validate",
                "schemas",
                "repro-check",
            )
        ],
    ],
)
def test_drift_help_explains_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: geno-pipeline{' ' + command[0] if command else ''}")
    if not command:  # the top-level help lists every command and every exit code
        from geno_pipeline.cli import _HANDLERS, _STAGES, EXIT_CODES

        for name in (*_STAGES, *_HANDLERS):
            assert f"\n    {name} " in out or f"\n    {name}\n" in out, name
        for code in EXIT_CODES:
            assert f"\n  {code}  " in out, code
    else:  # each command's own help has a description beyond the usage line, and lists its options
        assert "\n\n" in out.strip() and ("options:" in out)


@pytest.mark.parametrize("tool", ["bench", "reliability", "mutation"])
def test_drift_developer_tools_explain_themselves_and_stay_out_of_the_cli(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    module = importlib.import_module(f"tools.{tool}")
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m tools.{tool}") and "options:" in out
    with pytest.raises(SystemExit):
        build_parser().parse_args([tool])  # not a user command
    capsys.readouterr()


def test_drift_cli_bad_params_no_traceback(tmp_path: Path) -> None:
    write_params(tmp_path, train={"lr": -1, "nope": 2})
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "train", "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.lr = -1" in proc.stderr and "train.nope: unknown key" in proc.stderr


def test_drift_validate_command(tmp_path: Path) -> None:
    assert main(["validate", str(REPO / "params.yaml")]) == 0
    bad = tmp_path / "environment.json"
    bad.write_text('{"schema_version": "9"}\n')
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not match schema 'environment'" in proc.stderr
