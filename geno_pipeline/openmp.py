"""How torch's OpenMP threads wait, set before torch loads.

torch's CPU kernels run thousands of small parallel regions per training step. GNU OpenMP (libgomp, which the Linux
torch wheels use) makes a thread that reaches the end of a region spin for about 300,000 iterations before it sleeps.
On a machine whose cores other jobs also use, a spinning thread burns the time slice that the thread it waits for
needs, and a run beside two other torch jobs slows by far more than its fair share of the cores. Waiting passively
(`OMP_WAIT_POLICY=PASSIVE`: sleep at once) changes when threads run, never what they compute, so every output byte
stays the same (docs/performance.md has the measurements).

libgomp reads its settings once, when torch loads it, so the command line sets them first (`apply_wait_policy`) and
its child processes (the launcher's workers, preflight's torch probe, the checkpoint writer) inherit them. A user's
own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping

__all__ = ["USER_KEYS", "WAIT_SETTING", "apply_wait_policy", "wait_policy_fact"]

WAIT_SETTING = ("OMP_WAIT_POLICY", "PASSIVE")
"""The variable and value the command line sets (docs/performance.md has the measurements behind the choice)."""
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_wait_policy(environ: MutableMapping[str, str], *, torch_loaded: bool | None = None) -> bool:
    """Set `WAIT_SETTING` in `environ` unless the user chose how OpenMP threads wait (OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set) or torch is already loaded in this process (too late to matter: `torch_loaded`, default: torch
    is in sys.modules); True when it was set here."""
    loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if loaded or any(key in environ for key in USER_KEYS):
        return False
    key, value = WAIT_SETTING
    environ[key] = value
    return True


def wait_policy_fact(environ: MutableMapping[str, str] | dict[str, str]) -> str:
    """How this process's OpenMP threads wait, for the runtime report: the variables set, or libgomp's default."""
    found = [f"{key}={environ[key]}" for key in USER_KEYS if key in environ]
    return ", ".join(found) if found else "libgomp default (spin, then sleep)"
