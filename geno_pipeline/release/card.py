"""MODEL_CARD.md: the bundle explained for people (deterministic text)."""

from __future__ import annotations

import yaml

from geno_pipeline.release.documents import ReleaseMetadata, ReleaseMetrics
from geno_pipeline.sweep.documents import Spread
from geno_pipeline.training.documents import TrainingReport

__all__ = ["LICENSE_ID", "card_metadata", "genome_name", "model_card"]

LICENSE_ID = "apache-2.0"
"""The project's license (LICENSE), which the released weights are published under too."""


def genome_name(meta: ReleaseMetadata) -> str:
    """The reference, as a person names it: the FASTA's file name, or the synthetic genome's seed and size."""
    source, data = meta.dataset_source, meta.params.data
    if source.kind == "fasta" and source.fasta_path is not None:
        return source.fasta_path.rsplit("/", 1)[-1]
    return f"synthetic genome (seed {data.seed}, {data.genome_length:,} bases)"


def card_metadata(meta: ReleaseMetadata, metrics: ReleaseMetrics) -> dict[str, object]:
    """The card's YAML metadata block, in the Hugging Face model-card format (license, library, tags, model-index)."""
    genome = genome_name(meta)
    return {
        "license": LICENSE_ID,
        "library_name": "geno-pipeline",
        "tags": ["dna", "genomics", "world-model", "latent-dynamics", "sequence-edits", "geno-pipeline"],
        "model-index": [
            {
                "name": meta.run_id,
                "results": [
                    {
                        "task": {"type": "latent-dynamics", "name": "Latent state of an edited DNA window"},
                        "dataset": {"type": "dna-windows", "name": genome, "split": "held-out windows", "revision": meta.dataset_id},
                        "metrics": [
                            {"type": "mse", "name": "held-out prediction loss", "value": round(metrics.final_heldout_loss, 4)},
                            {"type": "mse", "name": "identity baseline loss", "value": round(metrics.identity_baseline_heldout_loss, 4)},
                            {"type": "ratio", "name": "held-out / baseline", "value": round(metrics.heldout_to_baseline, 3)},
                        ],
                    }
                ],
            }
        ],
    }


def _records_line(meta: ReleaseMetadata, limit: int = 8) -> str:
    """Which records fed which split, named up to `limit` per split."""

    def names(roles: tuple[str, ...]) -> str:
        chosen = [r.name for r in meta.dataset_records if r.role in roles]
        shown = ", ".join(f"`{n}`" for n in chosen[:limit])
        return shown + (f" and {len(chosen) - limit} more" if len(chosen) > limit else "") if chosen else "none"

    if all(r.role in ("train+valid", "excluded") for r in meta.dataset_records):
        return f"Records {names(('train+valid',))}; training and held-out windows drawn at random from them, disjoint."
    return f"Training records {names(('train', 'train+valid'))}; held-out records {names(('valid', 'train+valid'))} (a record hold-out)."


def _sweep_section(meta: ReleaseMetadata) -> str:
    """The seed-sweep evidence, when the release was gated on a sweep (else nothing)."""
    sweep = meta.sweep
    if sweep is None:
        return ""
    s, ratio = sweep.summary, sweep.summary.heldout_to_baseline

    def row(name: str, v: Spread) -> str:
        std = f"{v.std:.4f}" if v.std is not None else "n/a"
        return f"| {name} | {v.mean:.4f} | {std} | {v.min:.4f} | {v.max:.4f} |"

    return f"""
## Seed sweep

The same recipe trained with {len(sweep.seeds)} other seeds ({", ".join(map(str, sweep.seeds))}), everything else fixed:

| across seeds | mean | std | min | max |
|---|---|---|---|---|
{row("held-out / baseline", ratio)}
{row("final training loss", s.final_train_loss)}
{row("final held-out loss", s.final_heldout_loss)}

- This run's held-out / baseline ratio, {sweep.released_heldout_to_baseline:.4f}, lies within the sweep's spread
  [{sweep.spread_low:.4f}, {sweep.spread_high:.4f}] (mean +/- {meta.params.release.sweep_spread_sigmas:g} standard deviations).
- The worst seed ({s.worst_seed}, ratio {ratio.max:.4f}) is under the release threshold {sweep.max_ratio:g}.
- Collapse alerts across the sweep: {s.collapse_alerts}; seeds alerting at their final observation: {s.seeds_with_final_alerts}.
"""


def _use_section(meta: ReleaseMetadata) -> str:
    """How to load the model and what its inputs and outputs mean."""
    data, model = meta.params.data, meta.params.train.model
    return f"""## How to use

```python
from geno_pipeline import Edit, load_released_model

model = load_released_model("<this directory>")  # verifies the bundle first; never unpickles
window = "ACGT..."  # {data.window_length} bases of A/C/G/T (longer: the first {data.window_length} are read)
state = model.embed([window])  # [1, {model.state_dim}] latent state of the window
snv = Edit(10, window[10], "G" if window[10] != "G" else "A")  # an SNV at position 10
after = model.predict([window], [snv])  # [1, {model.state_dim}] predicted state after the SNV
score = model.edit_scores([window], [snv])  # [1] how far the edit moves the state, as predicted
```

An `Edit(position, ref, alt)` replaces the bases `ref` at a 0-based position of the window by `alt` (SNV, MNV,
insertion with `ref=""`, deletion with `alt=""`, indel); a list of edits per window is applied in order and rolled out
step by step. The latent state is the frozen encoder's summary of the window: random convolutional motif features
pooled over {model.segments} segments (so it keeps where a motif sits), projected to {model.state_dim} dimensions and
layer-normalised. `examples/use_the_model.py` in the geno-pipeline repository scores every SNV of a window.

"""


def _limits_section(meta: ReleaseMetadata) -> str:
    """What the model is for, and what it is not."""
    data = meta.params.data
    return f"""## Intended use and limits

- For research on latent world models of sequence edits and for testing reproducible training pipelines.
- The encoder is a frozen random-feature stand-in, not a pretrained DNA language model: the latent space has no
  biological meaning, and predictions say nothing about variant effects, pathogenicity or any clinical question.
- Trained on {"synthetic sequence" if data.source == "synthetic" else "the given FASTA only"}; do not expect it to transfer
  to other genomes.
- License: Apache-2.0 (the project's LICENSE); the reference sequence keeps its own terms.
"""


def model_card(meta: ReleaseMetadata, metrics: ReleaseMetrics, report: TrainingReport) -> str:
    """The model card text."""
    data, train, model = meta.params.data, meta.params.train, meta.params.train.model
    src = meta.dataset_source
    source = (
        f"`{genome_name(meta)}` (FASTA, sha256 `{src.fasta_sha256}`, {src.records} record(s), {src.reference_bases:,} bases)"
        if src.kind == "fasta"
        else f"a {genome_name(meta)}"
    )
    front = yaml.safe_dump(card_metadata(meta, metrics), sort_keys=False, allow_unicode=False, width=1000)
    weights = ", ".join(f"{k} {v}" for k, v in train.edit_type_weights.items())
    mix = ", ".join(f"K={k} {v}" for k, v in sorted(train.rollout_step_mix.items()))
    final = report.collapse.final_check
    collapse = (
        "no collapse alert at the final held-out observation"
        if meta.collapse_status == "no_alerts"
        else "collapse alerts at the final observation, released under release.allow_collapse_alerts: "
        + ", ".join(a.criterion for a in (final.alerts if final else []))
    )
    ratio = f"{metrics.heldout_to_baseline:.3f}"
    return f"""---
{front}---

# Model card: {meta.run_id}

A GenoLeWM-style latent world model over DNA windows, trained and released by geno-pipeline {meta.package_version}.
Given the latent state of a {data.window_length}-base DNA window and a relative edit (SNV, insertion, deletion, MNV,
indel), it predicts the latent state of the edited window, rolled out autoregressively for K edits.

## What it was trained on

- Reference: {source}; dataset `{meta.dataset_id}` ({data.train_windows:,} training and {data.valid_windows:,} held-out
  windows of {data.window_length} bases, disjoint).
- {_records_line(meta)}
- Edit types sampled with weights {weights}; rollout lengths {mix}.
- {train.steps} AdamW steps, batch {train.batch_size}, peak learning rate {train.lr}, {train.schedule} schedule
  ({train.warmup_steps} warmup steps), weight decay {train.weight_decay}, KL weight {train.kl_weight}.
- Model: frozen seeded convolutional encoder ({model.conv_channels} channels, kernel {model.kernel_size},
  {model.segments} segments) into a {model.state_dim}-dimensional state; action encoder and
  {"residual " if model.residual else ""}predictor MLP of width {model.hidden_dim}.

## Results (fixed held-out batch)

| metric | value |
|---|---|
| final training loss | {metrics.final_train_loss:.4f} |
| held-out prediction loss | {metrics.final_heldout_loss:.4f} |
| identity baseline ("no change") | {metrics.identity_baseline_heldout_loss:.4f} |
| held-out / baseline | {ratio} |
| collapse alerts during training | {metrics.collapse_alerts} |
| final effective rank | {f"{metrics.final_effective_rank:.1f}" if metrics.final_effective_rank is not None else "n/a"} |

Collapse status: {collapse}.

![Held-out loss against the identity baseline](heldout.png)

![Training loss, mean of each 25 steps](loss.png)

## Reproducibility

- Seeds: train.seed {meta.seeds.base}; derived encoder {meta.seeds.encoder}, model init {meta.seeds.model_init},
  sampler {meta.seeds.sampler}, validation {meta.seeds.validation}.
- Environment class: torch {meta.environment.torch_version}, device `{meta.environment.device_kind}`,
  {meta.environment.cpu_threads} CPU thread(s), deterministic={meta.environment.deterministic}.
- Code: source digest `{meta.source_digest}`; params hash `{meta.params_sha256}`.
- Same params, code and environment class give a byte-identical bundle.
{_sweep_section(meta)}
{_use_section(meta)}## How to verify

1. Checksums, with coreutils only: `sha256sum -c --strict SHA256SUMS` in this directory.
2. Everything geno-pipeline checks (checksums, no missing, extra or symlinked file, schemas, provenance subjects, the
   weights' run id): `geno-pipeline verify <this directory>`.
3. The publisher's signature, when the release was signed (`geno-pipeline sign`, OpenSSF model-signing format, kept
   beside this directory as `<this directory>.sig` so the bundle stays byte-identical), with only their public key:
   `model_signing verify key <this directory> --signature <this directory>.sig --public_key PUBLIC_KEY.pem`
   (PyPI `model-signing`), or `geno-pipeline verify <this directory> --public-key PUBLIC_KEY.pem`.

{_limits_section(meta)}"""
