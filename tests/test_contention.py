"""The contention bench's arithmetic (`python -m tools.contention`): the fair share and the environments it runs in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.openmp import USER_KEYS
from tools.contention import POLICIES, fair_share, policy_env


@pytest.mark.parametrize(
    ("threads", "competitors", "cores", "share"),
    [(2, 0, 2, 1.0), (2, 1, 2, 2.0), (2, 2, 2, 3.0), (1, 2, 2, 2.5), (1, 0, 2, 1.0), (4, 1, 2, 2.0)],
)
def test_fair_share_is_how_many_times_the_cores_are_asked_for(threads: int, competitors: int, cores: int, share: float) -> None:
    assert fair_share(threads, competitors, cores) == share


@given(st.integers(1, 64), st.integers(0, 8), st.integers(1, 64))
def test_fair_share_is_at_least_one_and_grows_with_the_competitors(threads: int, competitors: int, cores: int) -> None:
    assert fair_share(threads, competitors, cores) >= 1.0
    assert fair_share(threads, competitors + 1, cores) > fair_share(threads, competitors, cores) or competitors * cores == 0


@given(
    st.dictionaries(st.sampled_from([*USER_KEYS, "PATH", "OMP_NUM_THREADS"]), st.text(min_size=1, max_size=5)),
    st.sampled_from(sorted(POLICIES)),
)
def test_each_policy_runs_with_exactly_its_own_wait_setting(base: dict[str, str], policy: str) -> None:
    env = policy_env(policy, base)
    assert {k: v for k, v in env.items() if k in USER_KEYS} == POLICIES[policy]
    assert {k: v for k, v in env.items() if k not in USER_KEYS} == {k: v for k, v in base.items() if k not in USER_KEYS}
