"""The PPO example end to end through real rlmesh servers, at a tiny size."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import flax.serialization
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlmesh.jax as rj
from rlmesh.integrations.jit_step import JitVectorEnv
from rlmesh.integrations.ppo import (
    ActorCritic,
    PythonCollector,
    initial_state,
    make_scan_collector,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "ppo_cartpole.py"
TINY = ["--total-steps", "2048", "--num-envs", "4", "--num-steps", "64", "--eval-episodes", "4", "--no-progress"]


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ppo_cartpole_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check_outputs(out_dir: Path, num_envs: int) -> dict[str, Any]:
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert (out_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = metrics["summary"]
    assert summary["env_steps"] == 2048
    assert metrics["history"] and all(math.isfinite(row["loss"]) for row in metrics["history"])
    assert len(summary["final_eval_returns"]) == 4
    assert all(r >= 1 for r in summary["final_eval_returns"])
    model = ActorCritic(action_dim=2)
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((num_envs, 4)))["params"]
    params = flax.serialization.from_bytes(template, (out_dir / "params.msgpack").read_bytes())
    assert jax.tree.structure(params) == jax.tree.structure(template)
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("servers", [1, 2])
def test_example_smoke_with_embedded_server(tmp_path: Path, servers: int) -> None:
    """No backend flag: the example starts ``rlmesh serve`` itself, here double-buffered: two
    sessions of one server, or the two halves of two servers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), *TINY, "--servers", str(servers), "--double-buffer", "--out-dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = _check_outputs(out, 4)
    assert summary["mode"] == "embedded" and summary["servers"] == servers and summary["double_buffer"]


@pytest.mark.slow
def test_example_address_jit_rollout_matches_python_loop(tmp_path: Path, serve: Callable[..., Any]) -> None:
    """``--address`` with and without ``--jit-rollout`` trains identically for one seed."""
    server = serve(lambda: gymnasium.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync"))
    example = _load_example()
    summaries = {}
    for jit in (False, True):
        flags = [*TINY, "--address", server.address, "--out-dir", str(tmp_path / f"jit{jit}")]
        if jit:
            flags.append("--jit-rollout")
        summaries[jit] = example.train(example.parse_args(flags))
        _check_outputs(tmp_path / f"jit{jit}", 4)
    assert summaries[True]["mode"] == "address+jit-rollout"
    assert summaries[True]["final_eval_returns"] == summaries[False]["final_eval_returns"]
    assert summaries[True]["final_loss"] == pytest.approx(summaries[False]["final_loss"], rel=1e-4)


@pytest.mark.slow
def test_jit_rollout_transitions_equal_python_loop(serve: Callable[..., Any]) -> None:
    """Same seed and params: the lax.scan collector records the Python loop's transitions."""
    n, steps = 4, 96
    server = serve(lambda: gymnasium.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync"))
    model = ActorCritic(action_dim=2)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((n, 4)))["params"]
    key = jax.random.PRNGKey(3)
    address = server.address
    with rj.RemoteVectorEnv(address) as env_py, rj.RemoteVectorEnv(address) as env_jit:
        obs_py, _ = env_py.reset(seed=11)
        obs_jit, _ = env_jit.reset(seed=11)
        np.testing.assert_array_equal(np.asarray(obs_py), np.asarray(obs_jit))
        py, py_state = PythonCollector(env_py, apply_fn).collect(params, initial_state(obs_py, key), steps)

        jenv = JitVectorEnv(env_jit)

        def step_fn(handle: Any, action: jax.Array) -> tuple[Any, ...]:
            handle, out = jenv.step(handle, action)
            return handle, out.observation, out.reward, out.terminated, out.truncated

        collect = make_scan_collector(apply_fn, step_fn, steps)
        sc, sc_state = collect(params, initial_state(obs_jit, key, jenv.handle()))
    assert np.asarray(py.terminations | py.truncations).any()
    for name in ("actions", "terminations", "truncations", "valid", "rewards"):
        np.testing.assert_array_equal(getattr(py, name), getattr(sc, name), err_msg=name)
    for name in ("obs", "logprobs", "values", "last_value"):
        np.testing.assert_allclose(getattr(py, name), getattr(sc, name), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(py_state.first_valid, sc_state.first_valid)
    np.testing.assert_array_equal(py_state.key, sc_state.key)


@pytest.mark.slow
def test_ctrl_c_saves_what_it_has_and_exits_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT once training reports progress: a summary line, saved params, exit code 130."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(EXAMPLE),
        "--total-steps",
        "10000000",
        "--num-envs",
        "4",
        "--num-steps",
        "32",
        "--out-dir",
        str(out),
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    seen = b""
    while b"ret=" not in seen:  # tqdm shows the return once the first update is done
        chunk = proc.stderr.read1(4096)
        assert chunk, f"the example ended before training: {seen.decode()[-2000:]}"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    proc.stdout.close()
    proc.stderr.close()
    errors, output = seen.decode() + stderr.decode(), stdout.decode()
    assert proc.returncode == 130, errors[-2000:]
    assert "Traceback" not in errors + output, errors[-4000:]
    assert "interrupted at" in output and "interrupted (Ctrl-C); no final evaluation" in output, output
    assert (out / "params.msgpack").stat().st_size > 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["interrupted"] and summary["env_steps"] > 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--servers", "9", "--num-envs", "4"],
        ["--double-buffer", "--num-envs", "5"],
        ["--double-buffer", "--address", "tcp://127.0.0.1:5555"],
        ["--double-buffer", "--ray", "1"],
        ["--double-buffer", "--servers", "2", "--local"],
    ],
)
def test_bad_backend_flags_are_usage_errors(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    example = _load_example()
    with pytest.raises(SystemExit):
        example.parse_args(flags)
    assert "error: --" in capsys.readouterr().err
