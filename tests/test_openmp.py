"""How OpenMP threads wait: the command line sets GOMP_SPINCOUNT=1000 before torch loads, unless the user chose."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.openmp import USER_KEYS, WAIT_SETTING, apply_wait_policy, wait_policy_fact

_ENV = st.dictionaries(st.sampled_from([*USER_KEYS, "OMP_NUM_THREADS", "PATH"]), st.sampled_from(["ACTIVE", "PASSIVE", "1000", "2"]))


@given(_ENV, st.booleans())
def test_the_wait_policy_is_set_only_when_nobody_chose_one_and_torch_is_not_loaded(environ: dict[str, str], loaded: bool) -> None:
    before = dict(environ)
    chose = any(key in before for key in USER_KEYS)
    assert apply_wait_policy(environ, torch_loaded=loaded) == (not chose and not loaded)
    expected = before if chose or loaded else before | dict([WAIT_SETTING])
    assert environ == expected
    assert wait_policy_fact(environ) == (
        ", ".join(f"{k}={environ[k]}" for k in USER_KEYS if k in environ) or "libgomp default (spin, then sleep)"
    )


def test_the_command_line_sets_it_before_torch_loads() -> None:
    """`python -m geno_pipeline` (the console script's path) sets it in its own environment before anything imports
    torch, so libgomp reads it when torch loads it, and every child process inherits it."""
    key, value = WAIT_SETTING
    probe = (
        f"import os, sys; from geno_pipeline import cli; cli.main = lambda **_: print(os.environ.get('{key}'), "
        "'torch' in sys.modules) or 0; cli.entrypoint()"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [value, "False"]
    other = "OMP_WAIT_POLICY" if key == "GOMP_SPINCOUNT" else "GOMP_SPINCOUNT"
    kept = subprocess.run([sys.executable, "-c", probe], env=env | {other: "ACTIVE" if other == "OMP_WAIT_POLICY" else "1000"},
                          capture_output=True, text=True)  # fmt: skip
    assert kept.stdout.split() == ["None", "False"]
