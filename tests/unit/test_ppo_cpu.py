"""run_small_policies_inline: the XLA flag before the backend starts, a warning after."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from rlmesh.integrations.ppo.cpu import SEQUENTIAL_SCHEDULER_FLAG


def _run(code: str, xla_flags: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_before_the_first_computation_sets_the_flag_and_inline_dispatch() -> None:
    proc = _run(
        """
        import os, jax, jax.numpy as jnp
        from rlmesh.integrations.ppo.cpu import run_small_policies_inline
        run_small_policies_inline()
        run_small_policies_inline()  # idempotent: the flag is not appended twice
        print(os.environ["XLA_FLAGS"])
        print(jax.config.values.get("jax_cpu_enable_async_dispatch"))
        print(float(jax.jit(lambda x: x * 2)(jnp.ones(3)).sum()))
        """,
        xla_flags="--xla_cpu_enable_fast_math=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    flags, dispatch, total = proc.stdout.split("\n")[:3]
    assert flags == f"--xla_cpu_enable_fast_math=false {SEQUENTIAL_SCHEDULER_FLAG}"
    assert dispatch in ("False", "None")  # None: a JAX without the option
    assert total == "6.0"


def test_after_the_backend_started_it_warns_and_leaves_xla_flags_alone() -> None:
    proc = _run(
        """
        import jax, jax.numpy as jnp
        jnp.ones(3).block_until_ready()
        from rlmesh.integrations.ppo.cpu import run_small_policies_inline
        run_small_policies_inline()
        """
    )
    assert proc.returncode != 0
    assert "RuntimeWarning" in proc.stderr and "after JAX started its backends" in proc.stderr
    assert SEQUENTIAL_SCHEDULER_FLAG in proc.stderr  # the warning names the flag
