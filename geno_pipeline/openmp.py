"""How torch's OpenMP threads wait, set before torch loads.

torch's CPU kernels run thousands of small parallel regions per training step. GNU OpenMP (libgomp, which the Linux
torch wheels use) makes a thread that reaches the end of a region spin for 300,000 iterations before it sleeps. On a
machine whose cores other jobs also use, a spinning thread burns the time slice that the thread it waits for needs,
and the default profile's run beside two other torch jobs took 8.8 to 12.6 times as long as alone, where its fair
share of the cores is 3. Spinning 1,000 iterations (`GOMP_SPINCOUNT=1000`) still catches the next region of a busy
loop on an idle machine, then sleeps: beside two jobs the run took 3.1 to 3.6 times as long, and alone about as long
as with libgomp's default (7.0 s against 6.2 to 8.0 s over three runs). Sleeping at once (`OMP_WAIT_POLICY=PASSIVE`)
took 2.2 to 2.4 times as long beside two jobs but 9.7 to 9.8 s alone. How threads wait changes when they run, never
what they compute, so every output byte stays the same (`python -m tools.contention`; docs/performance.md has the
table).

libgomp reads its settings once, when torch loads it, so the command line sets them first (`apply_wait_policy`) and
its child processes (the launcher's workers, preflight's torch probe, the checkpoint writer) inherit them. A user's
own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept. Other OpenMP runtimes ignore the variable.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping

__all__ = ["USER_KEYS", "WAIT_SETTING", "apply_wait_policy", "wait_policy_fact"]

WAIT_SETTING = ("GOMP_SPINCOUNT", "1000")
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
