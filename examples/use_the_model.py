"""Use a released model: embed DNA windows, predict the latent state after edits, score every SNV of a window.

    python examples/use_the_model.py                      # the release in artifacts/release
    python examples/use_the_model.py path/to/release --sequence ACGT...

The window defaults to a held-out window of the project's dataset (artifacts/dataset/valid_windows.npy) when there is
one, else a seeded random sequence. The bundle is verified before the model is built (`load_released_model`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from geno_pipeline import Edit, load_released_model


def default_window(length: int) -> str:
    """A held-out window of this project's dataset, or a seeded random sequence."""
    valid = Path("artifacts/dataset/valid_windows.npy")
    codes = np.load(valid, allow_pickle=False)[0] if valid.is_file() else np.random.default_rng(0).integers(0, 4, size=length)
    return "".join("ACGT"[int(b)] for b in codes[:length])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release", nargs="?", default="artifacts/release", help="release bundle (default: artifacts/release)")
    parser.add_argument("--sequence", default=None, help="a DNA window (A/C/G/T, at least the model's window length)")
    parser.add_argument("--top", type=int, default=5, help="how many of the highest-scoring SNVs to print")
    args = parser.parse_args()

    model = load_released_model(args.release)  # raises VerifyError, listing every problem, if the bundle does not verify
    length = model.window_length
    window = args.sequence or default_window(length)
    print(f"model: {args.release}: {length}-base windows -> {model.encoder.state_dim}-dimensional latent states")

    state = model.embed([window])[0]
    print(f"embed: window {window[:24]}... -> latent of norm {float(state.norm()):.4f}")

    # Every SNV of the window: the predicted latent after it, against the latent of the edited sequence itself.
    edits = [Edit(p, window[p], b) for p in range(length) for b in "ACGT" if b != window[p].upper()]
    edited = [window[: e.position] + e.alt + window[e.position + 1 :] for e in edits]
    predicted = model.predict([window] * len(edits), edits)
    actual = model.embed(edited)
    error = float((predicted - actual).norm(dim=-1).mean())
    unchanged = float((state - actual).norm(dim=-1).mean())
    print(
        f"predict: over the {len(edits)} SNVs, mean |predicted - actual| = {error:.4f} against {unchanged:.4f} for "
        f"predicting no change (ratio {error / unchanged:.3f})"
    )

    # The same SNVs scored by how far the model predicts each moves the window's latent state.
    scores = model.edit_scores([window] * len(edits), edits)
    order = torch.argsort(scores, descending=True, stable=True)
    print(f"edit_scores: {len(edits)} SNVs scored; the {args.top} with the largest predicted effect:")
    for i in order[: args.top].tolist():
        e = edits[i]
        print(f"  position {e.position:4d} {e.ref}>{e.alt}  score {float(scores[i]):.4f}")
    print(f"  median score {float(scores.median()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
