"""`python -m tools.mutation`: which mutants count for which module, the score, and that the committed report is current."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.checksums import sha256_file
from geno_pipeline.errors import GenoPipelineError
from geno_pipeline.jsonio import validate_document
from tools.mutation import (
    EQUIVALENTS_FILE,
    TARGET_SCORE,
    TARGETS,
    build_report,
    carry_over,
    mutant_globs,
    read_equivalents,
    read_exit_codes,
    status_of,
    target_of,
)
from tools.mutation import main as mutation_main

REPO = Path(__file__).resolve().parent.parent
SHA = {t.path: "0" * 64 for t in TARGETS}


def test_status_follows_mutmut_exit_codes() -> None:
    assert [status_of(c) for c in (1, 3, 0, 5, 33, 34, 36, 255, -9, None, 99)] == [
        "killed", "killed", "survived", "no tests", "no tests", "skipped", "timeout", "timeout", "segfault", "not checked",
        "suspicious",
    ]  # fmt: skip


def test_targets_are_the_ones_pyproject_gives_mutmut() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert config["only_mutate"] == [t.path for t in TARGETS]
    selection = config["pytest_add_cli_args_test_selection"]
    assert selection[:3] == ["tests", "-m", "not slow"]
    assert selection[3:] == ["--deselect", f"tests/test_mutation.py::{test_committed_report_is_current_and_meets_the_target.__name__}"]
    assert all((REPO / t.path).is_file() for t in TARGETS)


def test_target_of_whole_files_methods_and_selected_functions() -> None:
    by_name = {t.name: t for t in TARGETS}
    assert target_of("geno_pipeline.training.schedule.x__lerp__mutmut_2") == by_name["schedule"]
    assert target_of("geno_pipeline.distributed.x_tree_sum__mutmut_3") == by_name["distributed_split"]  # a package's __init__
    assert target_of("geno_pipeline.distributed.x_job_from_env__mutmut_3") is None  # not one of the split's functions
    assert target_of("geno_pipeline.config.sections.xǁRuntimeParamsǁ_device__mutmut_1") == by_name["config_sections"]
    assert target_of("geno_pipeline.config.xǁRuntimeParamsǁ_device__mutmut_1") is None  # the package's __init__ is not a target
    assert target_of("geno_pipeline.training.checkpoint_load.x__binding_problems__mutmut_7") == by_name["checkpoint_bindings"]
    assert target_of("geno_pipeline.training.checkpoint_load.x__fail__mutmut_1") is None  # not a binding check
    assert target_of("geno_pipeline.training.checkpoint.x__binding_problems__mutmut_7") is None  # another module
    assert target_of("geno_pipeline.training.trainer.x_f__mutmut_1") is None
    assert target_of("geno_pipeline.training.schedule_extra.x_f__mutmut_1") is None


_MODULES = ["schedule", "sampling", "tuples", "edits", "collapse", "checksums", "verify", "checkpoint_load", "checkpoint"]
_MODULES += ["sections", "loading", "trainer"]


@given(
    st.sampled_from(_MODULES),
    st.sampled_from(["x_f", "x__binding_problems", "x_load_checkpoint", "x_save_checkpoint", "xǁCǁm", "x_tensor_specs"]),
    st.integers(1, 300),
)
def test_globs_select_exactly_the_mutants_that_are_scored(module: str, function: str, n: int) -> None:
    paths = {t.path.rsplit("/", 1)[-1].removesuffix(".py"): t.module for t in TARGETS}
    name = f"{paths.get(module, 'geno_pipeline.training.' + module)}.{function}__mutmut_{n}"
    assert any(fnmatch.fnmatch(name, g) for g in mutant_globs()) == (target_of(name) is not None)


def codes(**by_target: list[int | None]) -> dict[str, int | None]:
    modules = {t.name: t for t in TARGETS}
    out: dict[str, int | None] = {}
    for name, exits in ({t.name: [1] for t in TARGETS} | by_target).items():
        target = modules[name]
        function = target.functions[0] if target.functions else "f"
        out.update({f"{target.module}.x_{function}__mutmut_{i + 1}": code for i, code in enumerate(exits)})
    return out


def test_score_counts_timeouts_as_detected_and_leaves_equivalents_out() -> None:
    exits = codes(schedule=[1] * 17 + [36] + [0, 0], checksums=[1] * 9 + [33])
    exits["geno_pipeline.training.trainer.x_f__mutmut_1"] = 0  # not a target: ignored
    equivalent = {"geno_pipeline.training.schedule.x_f__mutmut_19": "same float either way"}
    report = build_report(exits, equivalent, SHA, tool="mutmut test")
    validate_document(json.loads(report.model_dump_json()), "mutation")
    schedule = next(m for m in report.modules if m.name == "schedule")
    assert (schedule.mutants, schedule.killed, schedule.timeout, schedule.survived, schedule.equivalent) == (20, 17, 1, 2, 1)
    assert schedule.score == pytest.approx(18 / 19)
    checksums = next(m for m in report.modules if m.name == "checksums")
    assert (checksums.no_tests, checksums.score) == (1, 0.9)
    others = len(TARGETS) - 2  # one killed mutant in each other target
    assert report.total_mutants == 30 + others and report.total_detected == 27 + others and report.total_equivalent == 1
    assert report.complete and report.total_score == pytest.approx((27 + others) / (29 + others)) and report.target_met
    assert [(s.mutant.rsplit("_", 1)[-1], s.status, s.equivalent_reason) for s in report.survivors] == [
        ("10", "no tests", None), ("19", "survived", "same float either way"), ("20", "survived", None)
    ]  # fmt: skip


def test_target_is_missed_when_one_module_is_under_it_even_if_the_total_is_not() -> None:
    exits = codes(schedule=[1] * 100, tuples=[1] * 8 + [0, 0])
    report = build_report(exits, {}, SHA, tool="mutmut test")
    others = len(TARGETS) - 2
    assert report.total_score == pytest.approx((108 + others) / (110 + others)) and report.total_score >= TARGET_SCORE
    assert not report.target_met


def test_unrun_mutants_leave_their_module_unscored_and_the_report_incomplete() -> None:
    report = build_report(codes(edits=[1, 0, None, None]), {}, SHA, tool="mutmut test")
    edits = next(m for m in report.modules if m.name == "edits")
    assert (edits.unchecked, edits.score, report.total_unchecked, report.complete, report.total_score) == (2, None, 2, False, None)
    assert not report.target_met
    assert [s.status for s in report.survivors] == ["survived"]
    assert all(m.score == 1.0 for m in report.modules if m.name != "edits")


def test_equivalent_entries_that_no_longer_survive_are_stale() -> None:
    exits = codes(schedule=[1, 0])
    equivalents = {"geno_pipeline.training.schedule.x_f__mutmut_1": "killed now", "geno_pipeline.gone.x_f__mutmut_1": "gone"}
    report = build_report(exits, equivalents, SHA, tool="mutmut test")
    assert report.stale_equivalents == sorted(equivalents)
    assert next(m for m in report.modules if m.name == "schedule").equivalent == 0


def test_modules_not_run_here_keep_the_previous_figures_while_their_files_are_unchanged() -> None:
    equivalents = {"geno_pipeline.training.schedule.x_f__mutmut_3": "same float either way"}
    previous = build_report(codes(schedule=[1, 1, 0], edits=[1, 0]), equivalents, SHA, tool="mutmut old")
    changed = SHA | {"geno_pipeline/data/edits.py": "1" * 64}
    fresh = build_report(codes(schedule=[None] * 3, edits=[None] * 2, tuples=[1, 36]), equivalents, changed, tool="mutmut new")
    report = carry_over(fresh, previous, equivalents)
    validate_document(json.loads(report.model_dump_json()), "mutation")
    by = {m.name: m for m in report.modules}
    assert by["schedule"].carried_over and (by["schedule"].killed, by["schedule"].equivalent, by["schedule"].score) == (2, 1, 1.0)
    assert not by["edits"].carried_over and by["edits"].score is None  # its file changed: it must be run again
    assert not by["tuples"].carried_over and (by["tuples"].killed, by["tuples"].timeout) == (1, 1)  # run here: this run's
    assert [s.mutant for s in report.survivors] == ["geno_pipeline.training.schedule.x_f__mutmut_3"]
    assert report.survivors[0].equivalent_reason == "same float either way"
    assert (report.total_mutants, report.total_unchecked, report.complete, report.target_met) == (fresh.total_mutants, 2, False, False)
    assert report.total_detected == fresh.total_detected + 2
    # today's equivalents decide: an entry removed counts the survivor against the score; one for a mutant that did not
    # survive there is stale
    judged = carry_over(fresh, previous, {"geno_pipeline.training.schedule.x_f__mutmut_1": "killed there"})
    schedule = next(m for m in judged.modules if m.name == "schedule")
    assert (schedule.equivalent, schedule.score) == (0, pytest.approx(2 / 3))
    assert judged.stale_equivalents == ["geno_pipeline.training.schedule.x_f__mutmut_1"]
    assert carry_over(previous, previous, equivalents) == previous  # everything run here: nothing is carried


def test_read_exit_codes_and_a_bad_equivalents_file(tmp_path: Path) -> None:
    meta = tmp_path / "mutants" / "geno_pipeline" / "checksums.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": {"geno_pipeline.checksums.x_f__mutmut_1": 1}}))
    assert read_exit_codes(tmp_path / "mutants") == {"geno_pipeline.checksums.x_f__mutmut_1": 1}
    bad = tmp_path / "eq.yaml"
    bad.write_text("geno_pipeline.checksums.x_f__mutmut_1: ''\n")
    with pytest.raises(GenoPipelineError, match="non-empty reason"):
        read_equivalents(bad)
    assert read_equivalents(tmp_path / "absent.yaml") == {}


def test_report_only_without_results_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mutation_main(["--root", str(tmp_path), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "no mutmut results under" in err and "fix: run `python -m tools.mutation`" in err and "Traceback" not in err
    assert mutation_main(["--root", str(tmp_path), "--report-only", "--target", "schedul"]) == 2
    assert "--target schedul: no such target; fix: use one of schedule, sampling," in capsys.readouterr().err


def test_committed_report_is_current_and_meets_the_target() -> None:
    """reports/mutation.json describes the code as it is (rerun `python -m tools.mutation` after changing a target), every
    module it scored meets the target, and once every module is scored the whole target is met."""
    report = json.loads((REPO / "reports" / "mutation.json").read_text())
    validate_document(report, "mutation")
    assert [m["name"] for m in report["modules"]] == [t.name for t in TARGETS]
    for module in report["modules"]:
        assert module["source_sha256"] == sha256_file(REPO / module["path"]), (
            f"{module['path']} changed since reports/mutation.json was written; fix: run `python -m tools.mutation` and commit the report"
        )
        assert module["score"] is None or module["score"] >= TARGET_SCORE, f"{module['name']}: {module['score']:.3f}"
    assert report["target_met"] == report["complete"] and not report["stale_equivalents"]
    equivalents = read_equivalents(REPO / EQUIVALENTS_FILE)
    assert {s["mutant"] for s in report["survivors"] if s["equivalent_reason"]} == set(equivalents)
