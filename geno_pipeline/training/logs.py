"""The train stage's deterministic logs (metrics.jsonl, collapse.jsonl, train.log) and the CSV plots made from them.

Logs are append-only; a checkpoint records each one's length and hash, and a resume truncates them
back to that prefix, so a resumed run's logs equal the straight run's byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from geno_pipeline.checksums import sha256_bytes
from geno_pipeline.errors import TrainingCheckpointError
from geno_pipeline.fsio import writing
from geno_pipeline.jsonio import atomic_write_bytes, atomic_write_text, jsonl_line, validate_document
from geno_pipeline.layout import LOG_FILES, Layout
from geno_pipeline.readers import read_text
from geno_pipeline.training.checkpoint import LogRecord
from geno_pipeline.training.documents import CollapseLine, MetricsLine
from geno_pipeline.training.pngplot import Series, line_chart_png

__all__ = ["COLLAPSE_PLOT_KEYS", "PNG_PLOTS", "RunLogs", "plot_pngs", "write_plots"]

COLLAPSE_PLOT_KEYS = (
    "pred_var_per_dim",
    "target_var_per_dim",
    "pairwise_pred_dist_mean",
    "effective_rank",
    "pred_target_corr",
    "pred_cos_mean",
)


class RunLogs:
    """Append-only deterministic logs; truncated back to a checkpoint's prefix on resume.

    Lines are appended without a sync of their own: `record` (what a checkpoint keeps) syncs every log first, so a
    checkpoint on disk never records log bytes that a crash of the machine could take back. `record` hashes only the
    bytes appended since the last record (the running hash of the prefix before them is kept), so a checkpoint costs
    the same at step 100 000 as at step 100.

    Each log is opened for appending once (at its first line after `reset` or `truncate_to`, which replace the file)
    and written unbuffered, one system call a line; `close` closes them (`finish`, or the loop raising)."""

    def __init__(self, layout: Layout) -> None:
        self.paths = {name: layout.log(name) for name in LOG_FILES}
        self._shape_checked: set[str] = set()
        self._hashed: dict[str, tuple[int, hashlib._Hash]] = {}  # log -> (bytes hashed, running SHA-256 of them)
        self._handles: dict[str, io.FileIO] = {}  # log -> open for appending, unbuffered

    def close(self) -> None:
        """Close the logs' append handles (a later line opens its log again)."""
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle.close()

    def reset(self) -> None:
        """Start every log empty."""
        self.close()
        self._hashed.clear()
        for path in self.paths.values():
            atomic_write_bytes(path, b"")

    def sync(self) -> None:
        """Flush every log to disk."""
        for path in self.paths.values():
            with writing(path), open(path, "rb") as handle:
                os.fsync(handle.fileno())

    def lengths(self) -> dict[str, int]:
        """Every log's length in bytes now: each line is handed to the OS as it is appended, so this is what a
        checkpoint taken now must record."""
        out = {}
        for name, path in self.paths.items():
            with writing(path):
                out[name] = path.stat().st_size
        return out

    def record(self, lengths: Mapping[str, int]) -> dict[str, LogRecord]:
        """Length and hash of every log's first `lengths[name]` bytes (`lengths()` when the checkpoint was taken), synced
        to disk first (what a checkpoint keeps). Lines appended since are not recorded; they are synced too."""
        self.sync()
        out = {}
        for name, path in self.paths.items():
            want = lengths[name]
            done, running = self._hashed.get(name, (0, hashlib.sha256()))
            if done > want:  # a record behind the last one: hash its prefix afresh
                done, running = 0, hashlib.sha256()
            digest = running.copy()
            with writing(path), open(path, "rb") as handle:
                handle.seek(done)
                data = handle.read(want - done)
            if done + len(data) != want:
                raise TrainingCheckpointError(
                    f"{path}: {done + len(data)} bytes, fewer than the {want} it had at the checkpoint; it was cut while training"
                )
            digest.update(data)
            self._hashed[name] = (want, digest)
            out[name] = LogRecord(bytes=want, sha256=digest.hexdigest())
        return out

    def truncate_to(self, records: dict[str, LogRecord], *, step: int | None = None) -> None:
        """Cut every log back to the prefix a checkpoint recorded; refuse, changing no log, when a prefix differs or,
        given the checkpoint's `step`, when metrics.jsonl's prefix does not end at it (collapse.jsonl's at or before)."""
        self.close()
        self._hashed.clear()
        prefixes = {}
        for name, path in self.paths.items():
            want = records.get(name)
            if want is None:
                raise TrainingCheckpointError(f"checkpoint has no record of {name}")
            data = path.read_bytes() if path.is_file() else b""
            if len(data) < want.bytes or sha256_bytes(data[: want.bytes]) != want.sha256:
                raise TrainingCheckpointError(
                    f"{path}: does not start with the {want.bytes} bytes the checkpoint recorded (the metric history differs); "
                    "fix: train from scratch (without --resume)"
                )
            prefixes[name] = data[: want.bytes]
        metrics, collapse = _last_step(prefixes["metrics.jsonl"]), _last_step(prefixes["collapse.jsonl"])
        for name, last, fits in (("metrics.jsonl", metrics, metrics == step), ("collapse.jsonl", collapse, (collapse or 0) <= (step or 0))):
            if step is not None and not fits:
                raise TrainingCheckpointError(
                    f"{self.paths[name]}: the prefix the checkpoint of step {step} recorded ends at step {last}; the checkpoint "
                    "contradicts its logs; fix: resume from another checkpoint or train from scratch (without --resume)"
                )
        for name, data in prefixes.items():
            atomic_write_bytes(self.paths[name], data)

    def metrics(self, line: MetricsLine) -> None:
        """Append one step's metrics."""
        self._append("metrics.jsonl", line.model_dump(mode="json"), "metrics_line")

    def collapse(self, line: CollapseLine) -> None:
        """Append one held-out observation."""
        self._append("collapse.jsonl", line.model_dump(mode="json"), "collapse_line")

    def _append(self, name: str, document: dict[str, object], schema: str) -> None:
        """Append one JSON line to log `name`.

        A run's first line of each log is validated against the schema; the others have the same shape by construction
        (one pydantic model, checked on construction, the schema generated from it), so the per-line cost is the dump
        only. `tests/test_train.py` validates every written line."""
        if name not in self._shape_checked:
            validate_document(document, schema, source=str(self.paths[name]))
            self._shape_checked.add(name)
        self._write(name, jsonl_line(document))

    def log(self, text: str) -> None:
        """Append one line to train.log."""
        self._write("train.log", text.rstrip("\n") + "\n")

    def _write(self, name: str, line: str) -> None:
        """Hand one line to the OS (`lengths` counts it from then on)."""
        path = self.paths[name]
        with writing(path):
            handle = self._handles.get(name)
            if handle is None:
                handle = self._handles[name] = io.FileIO(path, "a")
            view = memoryview(line.encode("utf-8"))
            while view:
                view = view[os.write(handle.fileno(), view) :]

    def collapse_lines(self) -> list[CollapseLine]:
        """Every observation in collapse.jsonl."""
        path = self.paths["collapse.jsonl"]
        fix = "train from scratch (without --resume)"
        text = read_text(path, error=TrainingCheckpointError, what="JSON lines", fix=fix)
        try:
            return [CollapseLine.model_validate(json.loads(x)) for x in text.splitlines() if x.strip()]
        except (ValueError, ValidationError) as exc:
            raise TrainingCheckpointError(f"{path}: a line is not a valid collapse observation ({exc}); fix: {fix}") from None


PNG_PLOTS = ("loss.png", "heldout.png", "variance.png", "rank.png")
"""The charts rendered as PNG beside the CSVs (the release ships the first two and its model card shows them)."""
LOSS_BLOCK = 25
"""Steps per point of the training-loss chart (the mean of each block: single steps are too noisy to read)."""


def _block_means(steps: list[int], values: list[float], block: int) -> tuple[list[float], list[float]]:
    """(last step, mean value) of each run of `block` consecutive points."""
    out_x, out_y = [], []
    for start in range(0, len(steps), block):
        chunk = values[start : start + block]
        out_x.append(float(steps[min(start + block, len(steps)) - 1]))
        out_y.append(sum(chunk) / len(chunk))
    return out_x, out_y


def plot_pngs(metrics: list[dict[str, Any]], collapse: list[dict[str, Any]], identity_loss: float) -> dict[str, bytes]:
    """The `PNG_PLOTS` charts from the metrics and collapse lines: training loss (block means), held-out loss against
    the identity baseline, predicted against target variance per dimension, and the effective rank."""
    steps = [int(m["step"]) for m in metrics]
    loss = _block_means(steps, [float(m["loss"]) for m in metrics], LOSS_BLOCK)
    pred = _block_means(steps, [float(m["pred_loss"]) for m in metrics], LOSS_BLOCK)
    at = [float(c["step"]) for c in collapse]

    def held(key: str) -> list[float]:
        return [float(c["metrics"][key]) for c in collapse]

    return {
        "loss.png": line_chart_png(f"Training loss (mean of {LOSS_BLOCK} steps)", "step",
                                   [Series("loss", *loss), Series("prediction loss", *pred)]),
        "heldout.png": line_chart_png("Held-out loss vs identity baseline", "step", [
            Series("held-out loss", at, [float(c["heldout_loss"]) for c in collapse]),
            Series("identity baseline", at, [identity_loss] * len(at)),
        ]),
        "variance.png": line_chart_png("Variance per dimension (held-out)", "step", [
            Series("predicted", at, held("pred_var_per_dim")), Series("target", at, held("target_var_per_dim")),
        ]),
        "rank.png": line_chart_png("Effective rank of predictions (held-out)", "step", [
            Series("effective rank", at, held("effective_rank")),
        ]),
    }  # fmt: skip


def write_plots(layout: Layout, logs: RunLogs, identity_loss: float) -> None:
    """reports/plots/{loss,lr,collapse}.csv from the logs (floats as repr, so the CSVs are as exact as the logs; the
    collapse CSV carries the identity baseline for the held-out chart) and the `PNG_PLOTS` charts."""
    metrics = [json.loads(x) for x in logs.paths["metrics.jsonl"].read_text().splitlines() if x.strip()]
    collapse = [json.loads(x) for x in logs.paths["collapse.jsonl"].read_text().splitlines() if x.strip()]
    atomic_write_text(
        layout.plots / "loss.csv",
        "step,loss,pred_loss,kl_reg\n" + "".join(f"{m['step']},{m['loss']!r},{m['pred_loss']!r},{m['kl_reg']!r}\n" for m in metrics),
    )
    atomic_write_text(layout.plots / "lr.csv", "step,lr_multiplier\n" + "".join(f"{m['step']},{m['lr_multiplier']!r}\n" for m in metrics))
    header = "step,heldout_loss,identity_baseline_loss," + ",".join(COLLAPSE_PLOT_KEYS) + "\n"
    rows = "".join(
        f"{c['step']},{c['heldout_loss']!r},{identity_loss!r}," + ",".join(repr(c["metrics"][k]) for k in COLLAPSE_PLOT_KEYS) + "\n"
        for c in collapse
    )
    atomic_write_text(layout.plots / "collapse.csv", header + rows)
    for name, data in plot_pngs(metrics, collapse, identity_loss).items():
        atomic_write_bytes(layout.plots / name, data)


def _last_step(data: bytes) -> int | None:
    """`step` of the last JSON line of a log prefix (None when it has none or the line is not a log line)."""
    lines = data.splitlines()
    if not lines:
        return None
    try:
        step = json.loads(lines[-1]).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
