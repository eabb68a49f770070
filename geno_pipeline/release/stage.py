"""The `release` stage: gates, then a checksummed bundle built in a staging dir and renamed into place."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from geno_pipeline.checksums import sha256_file, write_sha256sums
from geno_pipeline.config import Params, TrainStageParams
from geno_pipeline.data.dataset import check_dataset_params
from geno_pipeline.data.manifest import DatasetManifest
from geno_pipeline.documents import ArtifactIdentity
from geno_pipeline.environment import EnvironmentFingerprint
from geno_pipeline.errors import DataError, ReleaseError
from geno_pipeline.fsio import require_writable
from geno_pipeline.jsonio import atomic_write_bytes, atomic_write_text, read_json, replace_dir_atomically, staging_dir, write_json
from geno_pipeline.layout import Layout
from geno_pipeline.preflight.documents import PreflightOutcome
from geno_pipeline.readers import read_tensor_bytes, read_text
from geno_pipeline.release.card import model_card
from geno_pipeline.release.documents import (
    BuildDefinition,
    Builder,
    BuildMetadata,
    ConsumedInput,
    ProvenanceStatement,
    ReleaseMetadata,
    ReleaseMetrics,
    ReleaseReport,
    ReleaseSweep,
    ResourceDescriptor,
    RunDetails,
    SlsaPredicate,
    Subject,
)
from geno_pipeline.runtime_report import StageResult, git_state
from geno_pipeline.source import LOCK_FILE, package_root, source_digest
from geno_pipeline.sweep.stage import read_sweep, released_binding
from geno_pipeline.sweep.summary import gate_problems, spread_interval
from geno_pipeline.tensorfile import TensorBytes, all_finite, serialize_tensors
from geno_pipeline.training.documents import TrainingReport
from geno_pipeline.training.logs import plot_pngs
from geno_pipeline.version import __version__

__all__ = ["BUNDLE_FILES", "Gated", "check_gates", "locked_packages", "run", "run_release", "summary", "sweep_gate"]

MODEL_FILE = "model.safetensors"
CHART_FILES = ("heldout.png", "loss.png")
"""Charts the bundle ships (the model card shows them), rendered from the training logs it was built from."""
BUNDLE_FILES = (MODEL_FILE, "metrics.json", "metadata.json", "provenance.intoto.json", "MODEL_CARD.md", *CHART_FILES)
MODEL_FORMAT = "geno-pipeline/world-model/v1"


def _created_at() -> str | None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return None
    if not epoch.isdigit():
        raise ReleaseError(f"SOURCE_DATE_EPOCH={epoch!r} is not a non-negative integer; fix: unset it or give seconds since 1970")
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Gated:
    """What passed the gates and goes into the bundle."""

    outcome: PreflightOutcome
    report: TrainingReport
    weights: dict[str, TensorBytes]  # as train stored them: the release writes the same bytes, without torch
    sweep: ReleaseSweep | None  # the sweep gate's evidence, when release.sweep_max_ratio is set


def sweep_gate(params: Params, layout: Layout, report: TrainingReport) -> tuple[list[str], ReleaseSweep | None]:
    """The seed-sweep gate (only with release.sweep_max_ratio set): failures, and the evidence for the metadata."""
    max_ratio = params.release.sweep_max_ratio
    if max_ratio is None:
        return [], None
    if report.heldout_to_baseline is None:
        return ["sweep gate: the released run has no held-out / baseline ratio (it did not complete)"], None
    fix = "run `geno-pipeline sweep` (dvc repro runs it with sweep.seeds)"
    sweep = read_sweep(layout.sweep_report, error=ReleaseError, fix=fix)
    sigmas = params.release.sweep_spread_sigmas
    problems = gate_problems(sweep, released_binding(params, report), report.heldout_to_baseline, max_ratio=max_ratio, sigmas=sigmas)
    if problems or sweep.summary is None:
        return [f"sweep gate: {p}" for p in problems], None
    low, high = spread_interval(sweep.summary.heldout_to_baseline, sigmas)
    evidence = ReleaseSweep(
        seeds=sweep.seeds, summary=sweep.summary, released_heldout_to_baseline=report.heldout_to_baseline,
        spread_low=low, spread_high=high, max_ratio=max_ratio,
    )  # fmt: skip
    return [], evidence


def check_gates(params: Params, layout: Layout) -> Gated:
    """Every release gate; raises `ReleaseError` listing each one that failed."""
    failures: list[str] = []
    if not layout.preflight_outcome.is_file():
        raise ReleaseError(f"gate 'preflight ok' failed: {layout.preflight_outcome} is missing; fix: run `geno-pipeline preflight`")
    outcome = PreflightOutcome.model_validate(
        read_json(layout.preflight_outcome, schema="preflight_outcome", fix="rerun `geno-pipeline preflight`")
    )
    if not outcome.ok:
        failures.append(f"preflight ok: preflight reported errors {', '.join(outcome.error_codes)}; fix: see reports/preflight.json")
    if not layout.train_report.is_file():
        raise ReleaseError(f"gate 'training completed' failed: {layout.train_report} is missing; fix: run `geno-pipeline train`")
    report = TrainingReport.model_validate(read_json(layout.train_report, schema="train_report", fix="rerun `geno-pipeline train`"))
    if report.status != "completed" or report.steps_completed != report.steps_requested:
        failures.append(
            f"training completed: status {report.status}, {report.steps_completed}/{report.steps_requested} steps; "
            "fix: finish training (geno-pipeline train --resume auto)"
        )
    if not layout.dataset_manifest.is_file() or sha256_file(layout.dataset_manifest) != report.dataset_manifest_sha256:
        failures.append(
            f"dataset unchanged since training: {layout.rel(layout.dataset_manifest)} is not the manifest the model was trained "
            "on (the dataset was rebuilt or replaced); fix: retrain on this dataset (geno-pipeline train), or restore that dataset"
        )
    else:
        try:
            check_dataset_params(layout.dataset_dir, params.data)
        except DataError as exc:
            failures.append(f"dataset built from these data params: {exc}")
    expected = TrainStageParams.from_params(params).sha256()
    if report.params_sha256 != expected:
        failures.append(
            "params unchanged since training: the runtime/train/collapse params differ from the ones trained with; fix: retrain"
        )
    weights: dict[str, TensorBytes] = {}
    model_path = layout.train_dir / MODEL_FILE
    if report.status == "completed":
        if not model_path.is_file():
            failures.append(f"training completed: {model_path} is missing; fix: retrain")
        else:
            weights = read_tensor_bytes(model_path, error=ReleaseError, fix="retrain (geno-pipeline train)")
            bad = sorted(name for name, blob in weights.items() if not all_finite(blob))
            if bad:
                failures.append(f"no non-finite values: weights {', '.join(bad[:5])} hold NaN or inf")
    losses = [report.final_train_loss, report.final_heldout_loss, report.identity_baseline_heldout_loss]
    if any(v is None or not math.isfinite(v) for v in losses):
        failures.append(f"no non-finite values: final losses are {losses}")
    final = report.collapse.final_check
    if final is not None and final.alerts and not params.release.allow_collapse_alerts:
        alerts = ", ".join(f"{a.criterion}={a.value:.4g} (threshold {a.threshold:.4g})" for a in final.alerts)
        failures.append(
            f"no collapse alert at the final observation: step {final.step} has {alerts}; "
            "fix: investigate collapse, or set release.allow_collapse_alerts: true to release anyway"
        )
    swept, evidence = sweep_gate(params, layout, report) if not failures else ([], None)
    failures += swept
    if failures:
        raise ReleaseError("release refused; nothing was written. Failed gates:\n" + "\n".join(f"  - {f}" for f in failures))
    return Gated(outcome, report, weights, evidence)


def locked_packages(root: Path) -> list[tuple[str, str]]:
    """(name, version) pins of the lock file."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            out.append((match.group(1), match.group(2)))
    return sorted(out, key=lambda p: p[0].lower())


def _weights_metadata(params: Params, report: TrainingReport) -> dict[str, str]:
    """The safetensors header of the released weights: identity, and what `load_released_model` rebuilds the model from."""
    return {
        "format": MODEL_FORMAT,
        "run_id": report.run_id,
        "params_sha256": report.params_sha256,
        "seed": str(params.train.seed),
        "source_digest": source_digest(),
        "window_length": str(params.data.window_length),
        "model_params": json.dumps(params.train.model.model_dump(), sort_keys=True),
        "encoder_seed": str(report.seeds.encoder),
        "init_seed": str(report.seeds.model_init),
    }


def release_metrics(report: TrainingReport) -> ReleaseMetrics:
    """metrics.json of the bundle, from the training report."""
    final = report.collapse.final_check
    assert report.final_train_loss is not None and report.final_heldout_loss is not None and report.heldout_to_baseline is not None
    return ReleaseMetrics(
        run_id=report.run_id,
        steps=report.steps_completed,
        final_train_loss=report.final_train_loss,
        final_heldout_loss=report.final_heldout_loss,
        identity_baseline_heldout_loss=report.identity_baseline_heldout_loss,
        heldout_to_baseline=report.heldout_to_baseline,
        collapse_alerts=report.collapse.alert_count,
        final_pred_var_ratio=final.pred_var_ratio() if final else None,
        final_pairwise_ratio=final.pairwise_ratio() if final else None,
        final_effective_rank=final.metrics.effective_rank if final else None,
    )


def _metadata(params: Params, layout: Layout, gated: Gated, created: str | None) -> ReleaseMetadata:
    outcome, report = gated.outcome, gated.report
    train_files = [layout.final_model, layout.log("metrics.jsonl"), layout.log("collapse.jsonl")]
    consumed = [layout.preflight_outcome, layout.environment, layout.dataset_manifest, layout.train_report, *train_files]
    consumed += [layout.sweep_report] if gated.sweep is not None else []
    fix = "rebuild the dataset (geno-pipeline data), then retrain"
    manifest = DatasetManifest.model_validate(read_json(layout.dataset_manifest, schema="dataset_manifest", error=ReleaseError, fix=fix))
    final = report.collapse.final_check
    return ReleaseMetadata(
        run_id=report.run_id,
        package_version=__version__,
        source_digest=source_digest(),
        created_at=created,
        params=params,
        params_sha256=report.params_sha256,
        seeds=report.seeds,
        determinism=report.determinism,
        environment=EnvironmentFingerprint.model_validate(
            read_json(layout.environment, schema="environment", fix="rerun `geno-pipeline preflight`")
        ),
        dataset_id=report.dataset_id,
        dataset_manifest_sha256=report.dataset_manifest_sha256,
        dataset_source=manifest.source,
        dataset_records=manifest.records,
        inputs=[ConsumedInput(path=layout.rel(p), sha256=sha256_file(p)) for p in consumed],
        preflight=outcome,
        collapse_status="alerts_acknowledged" if final is not None and final.alerts else "no_alerts",
        model_file=MODEL_FILE,
        sweep=gated.sweep,
    )


def _provenance(bundle: Path, layout: Layout, metadata: ReleaseMetadata) -> dict[str, object]:
    """An unsigned in-toto Statement (SLSA provenance v1) over every other bundle file."""
    subjects = [Subject(name=n, digest={"sha256": sha256_file(bundle / n)}) for n in BUNDLE_FILES if n != "provenance.intoto.json"]
    deps = [
        ResourceDescriptor(name="source", digest={"sha256": metadata.source_digest.removeprefix("sha256:")}),
        ResourceDescriptor(
            name="dataset_manifest", uri=layout.rel(layout.dataset_manifest), digest={"sha256": metadata.dataset_manifest_sha256}
        ),
    ]
    deps += [ResourceDescriptor(name=name, uri=f"pkg:pypi/{name.lower()}@{version}") for name, version in locked_packages(package_root())]
    statement = ProvenanceStatement(
        subject=subjects,
        predicate=SlsaPredicate(
            buildDefinition=BuildDefinition(
                buildType="https://geno-pipeline.invalid/build-types/dvc-repro/v1",
                externalParameters={"params": metadata.params.model_dump(mode="json")},
                internalParameters={"seeds": metadata.seeds.model_dump(), "environment": metadata.environment.model_dump(mode="json")},
                resolvedDependencies=deps,
            ),
            runDetails=RunDetails(
                builder=Builder(id="https://geno-pipeline.invalid/builders/local-dvc"),
                metadata=BuildMetadata(invocationId=metadata.run_id, startedOn=metadata.created_at),
            ),
        ),
    )
    return statement.model_dump(mode="json", by_alias=True, exclude_none=True)


def _charts(layout: Layout, report: TrainingReport) -> dict[str, bytes]:
    """`CHART_FILES` rendered from the training logs the release consumed (the same charts as reports/plots/)."""
    fix = "rerun `geno-pipeline train`"
    lines = {
        name: [json.loads(x) for x in read_text(layout.log(name), error=ReleaseError, what="log", fix=fix).splitlines() if x.strip()]
        for name in ("metrics.jsonl", "collapse.jsonl")
    }
    charts = plot_pngs(lines["metrics.jsonl"], lines["collapse.jsonl"], report.identity_baseline_heldout_loss)
    return {name: charts[name] for name in CHART_FILES}


def write_bundle(params: Params, layout: Layout, gated: Gated) -> None:
    """Write the bundle in a staging directory, then swap it into artifacts/release (a failure leaves the old one)."""
    report, weights = gated.report, gated.weights
    stage = staging_dir(layout.release_dir)
    try:
        # 1) weights, with identity in the safetensors header
        atomic_write_bytes(stage / MODEL_FILE, serialize_tensors(weights, _weights_metadata(params, report)))
        # 2) metrics and metadata
        metrics = release_metrics(report)
        write_json(stage / "metrics.json", metrics, schema="release_metrics")
        metadata = _metadata(params, layout, gated, _created_at())
        write_json(stage / "metadata.json", metadata, schema="release_metadata")
        # 3) people's card, and the charts it shows
        atomic_write_text(stage / "MODEL_CARD.md", model_card(metadata, metrics, report))
        for name, data in _charts(layout, report).items():
            atomic_write_bytes(stage / name, data)
        # 4) provenance over every other file
        write_json(stage / "provenance.intoto.json", _provenance(stage, layout, metadata), schema="provenance")
        # 5) SHA256SUMS over every other file, then swap into place
        write_sha256sums(stage, sorted(BUNDLE_FILES))
        replace_dir_atomically(stage, layout.release_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def run(params: Params, layout: Layout) -> StageResult[ReleaseReport]:
    """Check the gates and write the bundle atomically; returns the report also written to reports/release.json."""
    for leftover in layout.sweep_stage_temporaries("release"):
        print(f"release: removed {layout.rel(leftover)} left by an interrupted run", file=sys.stderr)
    gated = check_gates(params, layout)
    report = gated.report
    require_writable([layout.release_dir.parent, layout.release_report.parent])  # all or nothing: the report too
    write_bundle(params, layout, gated)
    files = [
        ArtifactIdentity(path=layout.rel(p), sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in (layout.release_dir / n for n in sorted((*BUNDLE_FILES, "SHA256SUMS")))
    ]
    release = ReleaseReport(
        run_id=report.run_id,
        bundle_dir=layout.rel(layout.release_dir),
        files=files,
        verify_command=f"geno-pipeline verify {layout.rel(layout.release_dir)}",
    )
    write_json(layout.release_report, release, schema="release_report")
    commit, dirty = git_state(layout.root)
    return StageResult(release, {"run_id": release.run_id, "git_commit_at_release": commit, "git_dirty_at_release": dirty})


def run_release(params: Params, layout: Layout) -> ReleaseReport:
    """Programmatic form of the stage: the report also written to reports/release.json."""
    return run(params, layout).document


def summary(layout: Layout, release: ReleaseReport) -> list[str]:
    """What the CLI prints after the stage."""
    sums = next(f.sha256 for f in release.files if f.path.endswith("/SHA256SUMS"))
    return [
        f"release: wrote {release.bundle_dir} ({len(release.files)} files, SHA256SUMS {sums[:16]}...) for {release.run_id}",
        f"release: check it with `{release.verify_command}` or `cd {release.bundle_dir} && sha256sum -c --strict SHA256SUMS`",
    ]
