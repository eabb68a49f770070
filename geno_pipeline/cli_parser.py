"""The `geno-pipeline` argument parser: every command, its options and its help, and the exit-code table it prints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from geno_pipeline.errors import (
    EXIT_CHECKPOINT,
    EXIT_DISTRIBUTED,
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PREFLIGHT,
    EXIT_RELEASE_GATE,
    EXIT_STORAGE,
    EXIT_TRAINING_STOPPED,
    EXIT_VERIFY,
)
from geno_pipeline.version import __version__

if TYPE_CHECKING:  # the CLI imports params, pydantic and numpy only when a stage runs, so --help stays light
    pass

__all__ = ["EXIT_CODES", "build_parser"]


EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug): one line; the traceback with --debug or GENO_PIPELINE_DEBUG=1",
    EXIT_INVALID: "invalid input: params, data, arguments or a file that fails its schema",
    EXIT_PREFLIGHT: "preflight ran and the machine is not ready (report written)",
    EXIT_TRAINING_STOPPED: "training stopped early: non-finite loss/gradient or collapse with on_alert: halt",
    EXIT_CHECKPOINT: "a resume checkpoint is corrupt or bound to different params/dataset/code",
    EXIT_RELEASE_GATE: "a release gate failed; no bundle was written",
    EXIT_VERIFY: "verification failed: bundle, schema or reproducibility mismatch",
    EXIT_STORAGE: "a file or stdout could not be written: read-only directory, full disk or permissions (nothing half-written)",
    EXIT_DISTRIBUTED: "a multi-process run could not start, or a worker died or hung past runtime.dist_timeout_s; all were stopped",
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: ROOT/params.yaml)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    epilog = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="geno-pipeline",
        description=(
            "Preflight, deterministic training and verifiable release of a DNA latent world model. "
            "Normally run through `dvc repro`, which calls data -> preflight -> train -> sweep -> release."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"geno-pipeline {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error (or set GENO_PIPELINE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_stage_parsers(sub)
    _add_trust_parsers(sub)
    _add_tool_parsers(sub)
    return parser


def _add_stage_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """data, preflight, train, sweep, release: the five DVC stages."""
    p = sub.add_parser(
        "data",
        help="build artifacts/dataset/ from the `data` params",
        description="Build the train/valid windows, dataset_manifest.json and SHA256SUMS in artifacts/dataset/ "
        "from a seeded synthetic genome or a FASTA file. Same params give a byte-identical dataset.",
    )
    _common(p)

    p = sub.add_parser(
        "preflight",
        help="check this machine can run the job; write reports/preflight.json",
        description="Probe dependencies, CUDA (NVML and torch), determinism settings, disk, the dataset and the params; "
        "print one line per check, write reports/preflight.json and artifacts/preflight/environment.json. "
        "Exit 0 when ok, 3 when not.",
    )
    _common(p)
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the report here and nothing else: a what-if check (e.g. with --params) that leaves the project's "
        "artifacts/preflight/, which train and release read, as it was (default: ROOT/reports/preflight.json and "
        "artifacts/preflight/)",
    )

    p = sub.add_parser(
        "train",
        help="train the model deterministically (resumable)",
        description="Train the latent world model from the `runtime`, `train` and `collapse` params on artifacts/dataset/. "
        "Writes checkpoints, metrics.jsonl, collapse.jsonl and train.log to artifacts/train/ and reports/train.json.",
    )
    _common(p)
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="resume from the latest checkpoint in artifacts/train/checkpoints (auto) or from a checkpoint directory",
    )
    p.add_argument(
        "--stop-after-step",
        type=int,
        default=None,
        metavar="K",
        help="write a checkpoint after step K and stop (status `stopped`); resume later with --resume auto",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument(
        "--prefetch",
        choices=("auto", "on", "off"),
        default="auto",
        help="prepare the next steps' batches on a worker thread while this step trains (auto: on CUDA, or where this "
        "node's workers leave a CPU core free); the outputs are the same bytes either way",
    )

    p = sub.add_parser(
        "sweep",
        help="train further seeds, everything else fixed; write reports/sweep.json",
        description="Run the train stage in this process for seeds train.seed + 1 .. train.seed + N (N from --seeds or "
        "sweep.seeds), each deterministic and in its own directory artifacts/sweep/seed-<S>/, and write reports/sweep.json: "
        "per seed the held-out / identity-baseline ratio, final losses and collapse alerts; across seeds mean, std, min "
        "and max. Finished seeds are reused and interrupted ones resumed. With release.sweep_max_ratio set, `release` "
        "gates on it. dvc repro runs it with sweep.seeds (0: nothing to train).",
    )
    _common(p)
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="number of seeds (default: sweep.seeds from the params)")
    p.add_argument("--no-progress", action="store_true", help="no step progress within each seed (one line per seed remains)")

    p = sub.add_parser(
        "release",
        help="gate and write the checksummed release bundle",
        description="Check the release gates (preflight ok, training complete, finite, no final collapse alert) and write "
        "artifacts/release/ (model.safetensors, metrics.json, metadata.json, provenance.intoto.json, MODEL_CARD.md, "
        "SHA256SUMS) and reports/release.json. A failed gate writes nothing and exits 6.",
    )
    _common(p)


def _add_trust_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """verify and sign: checking and signing a release bundle."""
    p = sub.add_parser(
        "verify",
        help="verify a release bundle directory",
        description="Check every file listed in SHA256SUMS is present with the right hash, nothing extra, names are plain "
        "relative paths, no symlinks, and metadata/provenance validate and agree. Exit 0 or 7 listing every problem.",
    )
    p.add_argument("directory", type=Path, help="bundle directory, e.g. artifacts/release")
    p.add_argument(
        "--public-key",
        type=Path,
        default=None,
        metavar="PUB",
        help="also verify the model-signing signature with this PEM EC public key (needs the `sign` extra)",
    )
    p.add_argument("--signature", type=Path, default=None, metavar="SIG", help="signature file (default: DIRECTORY.sig beside the bundle)")

    p = sub.add_parser(
        "sign",
        help="sign a release offline (OpenSSF model-signing, EC key)",
        description="Verify the release, then sign it with the `model_signing` library: a Sigstore bundle holding a DSSE "
        "envelope over an in-toto statement of every file's sha256, signed with a local elliptic-curve key. The signature "
        "is written beside the release (default DIRECTORY.sig), never inside it, so the release stays byte-identical. "
        "An encrypted key's passphrase is read from $GENO_PIPELINE_KEY_PASSWORD. Needs `pip install -e '.[sign]'`. "
        "Check with `geno-pipeline verify DIRECTORY --public-key PUB` or upstream `model_signing verify key`.",
    )
    p.add_argument("directory", type=Path, help="bundle directory, e.g. artifacts/release")
    p.add_argument("--private-key", type=Path, required=True, metavar="KEY", help="PEM elliptic-curve private key (P-256/384/521)")
    p.add_argument("--signature", type=Path, default=None, metavar="SIG", help="where to write the signature (default: DIRECTORY.sig)")


def _add_tool_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """validate, schemas, repro-check."""
    p = sub.add_parser(
        "validate",
        help="check a JSON/JSONL file we write against its schema",
        description="Validate one of the pipeline's JSON files (or every line of a .jsonl) against its schema in schemas/.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--schema", default=None, help="schema name (default: guessed from the file name)")

    p = sub.add_parser(
        "schemas",
        help="write or check the committed JSON Schemas",
        description="Generate schemas/*.schema.json from the models (--write) or fail when the committed ones drifted (--check).",
    )
    p.add_argument("--root", type=Path, default=Path("."))
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")

    p = sub.add_parser(
        "repro-check",
        help="compare recomputed outputs with the committed dvc.lock",
        description="Hash each stage's outputs and compare them with the committed dvc.lock and the release SHA256SUMS; "
        "print one verdict per stage and write reports/runtime/repro_check.json. Exit 7 on a mismatch.",
    )
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--lock-ref", default="HEAD", help="git revision whose dvc.lock is the reference (default: HEAD)")
