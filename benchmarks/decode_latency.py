"""Decode latency of the JAX backend: from a step reply's arrival to a jitted policy's action.

Sections (``--only`` picks some; all by default):

* ``decode``: observations of 16 B, 64 KiB, 1 MiB and 16 MiB already in the receive buffer,
  decoded (a) by rlmesh.jax (``asarray``: DLPack import of the aligned buffer, zero copy),
  (b) by the copy a user writes by hand (``jnp.asarray(np.frombuffer(frame))``), and, for the
  record, (c) by the public ``jnp.from_dlpack``. Columns: the decode alone, the whole reply
  decode (msgpack header and body plus leaves, rlmesh only), and decode + a jitted policy
  until its action is ready (2x64 MLP on the flattened obs up to 64 KiB, a reduction above).
* ``scan``: the same decodes inside a jitted ``lax.scan``, each step an ordered io_callback
  returning the decoded observation to the policy (XLA copies callback results, so both paths
  pay one copy there; the table shows what remains).
* ``roundtrip``: full ``env.step`` + policy over tcp loopback against a server in another
  process, for 84x84x4 uint8 and 1024x1024 float32 observations, beside a raw pyzmq
  DEALER/ROUTER round trip carrying the same bytes (transport only, and with the hand copy and
  the same policy), and the original rlmesh 0.1.0 from PyPI when its venv exists
  (``RLMESH_ORIGINAL_VENV``, see benchmarks/original_rlmesh.py); plus the same env behind a
  unix socket stepped over the shared-memory fast path (``fast_path_*``; target: a 4 MiB
  float32 step at <= 0.5x the raw pyzmq round trip carrying the same bytes).
* ``jit_step``: CartPole-v1 x4 over tcp, 200 steps with a jitted 2x64 MLP: the Python loop
  against the same rollout inside one jitted ``lax.scan`` (rlmesh.integrations.jit_step).
* ``checks``: the chex-style action checkers (rlmesh.checks) per call.

Usage::

    python -m benchmarks.decode_latency [--quick] [--only decode,scan,roundtrip,jit_step,checks]

Prints tables and writes benchmarks/results/decode_latency.json. Machines are shared and noisy:
medians of many calls, one run; compare columns measured in the same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from benchmarks.harness import (
    print_table,
    raw_echo_server,
    rlmesh_server,
    time_calls,
    write_json,
)

SIZES: dict[str, tuple[int, ...]] = {
    "16 B": (4,),
    "64 KiB": (16384,),
    "1 MiB": (262144,),
    "16 MiB": (4194304,),
}
MLP_MAX_ELEMENTS = 16384
ROUNDTRIP_KINDS: dict[str, tuple[tuple[int, ...], str]] = {
    "84x84x4 uint8": ((84, 84, 4), "uint8"),
    "1024x1024 float32": ((1024, 1024), "float32"),
}


# -- the served env (imported by `rlmesh serve decode_latency:make_fixed_env`) ---------------


class FixedObsEnv(gym.Env):
    """Returns the same pre-made observation every step, so the server's cost is the wire."""

    def __init__(self, shape: list[int], dtype: str) -> None:
        low, high = (0, 255) if dtype == "uint8" else (-1.0, 1.0)
        self.observation_space = spaces.Box(low, high, tuple(shape), np.dtype(dtype))
        self.action_space = spaces.Discrete(2)
        rng = np.random.default_rng(0)
        if dtype == "uint8":
            self._obs = rng.integers(0, 256, tuple(shape), dtype=np.uint8)
        else:
            self._obs = rng.uniform(-1, 1, tuple(shape)).astype(dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return self._obs, {}

    def step(self, action: Any) -> Any:
        return self._obs, 1.0, False, False, {}


def make_fixed_env(shape: list[int], dtype: str) -> gym.Env:
    """Factory for ``rlmesh serve decode_latency:make_fixed_env --kwarg shape=[..] ...``."""
    return FixedObsEnv(shape, dtype)


# -- policies -------------------------------------------------------------------------------


def _policies() -> tuple[Callable[..., Any], Callable[..., Any]]:
    import jax
    import jax.numpy as jnp

    @jax.jit
    def mlp(params: Any, obs: Any) -> Any:
        w1, w2, w3 = params
        x = obs.reshape(-1).astype(jnp.float32)
        return jnp.argmax(jnp.tanh(jnp.tanh(x @ w1) @ w2) @ w3).astype(jnp.int32)

    @jax.jit
    def reduction(params: Any, obs: Any) -> Any:
        return (jnp.mean(obs.astype(jnp.float32)) > 0).astype(jnp.int32)

    return mlp, reduction


def _mlp_params(inputs: int) -> Any:
    import jax

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return (
        jax.random.normal(k1, (inputs, 64)) / np.sqrt(inputs),
        jax.random.normal(k2, (64, 64)) / 8,
        jax.random.normal(k3, (64, 2)),
    )


def _policy_for(shape: tuple[int, ...]) -> tuple[Callable[[Any], Any], str]:
    mlp, reduction = _policies()
    size = int(np.prod(shape))
    if size <= MLP_MAX_ELEMENTS:
        params = _mlp_params(size)
        return (lambda obs: mlp(params, obs)), "2x64 MLP"
    return (lambda obs: reduction(None, obs)), "mean reduction"


def _median_us(call: Callable[[], Any], number: int, repeat: int = 7) -> float:
    return time_calls(call, iterations=repeat, warmup=1, number=number)["median_us"]


# -- decode in a Python loop -----------------------------------------------------------------


def bench_decode(quick: bool) -> list[dict[str, Any]]:

    return [_decode_row(label, shape, quick) for label, shape in SIZES.items()]


def _decode_row(label: str, shape: tuple[int, ...], quick: bool) -> dict[str, Any]:
    import jax.numpy as jnp

    import rlmesh.jax as rj
    from rlmesh.codec import decode_body, encode_message, parse_header
    from rlmesh.tensor import Tensor

    source = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    frames = encode_message("ok", 7, (source, 1.0, False, False, {}))
    header_frame, payload = frames[0], source.tobytes()  # what the socket delivers
    tensor = Tensor.from_numpy(source)  # the aligned receive buffer recv_into filled
    policy, policy_name = _policy_for(shape)
    big = source.nbytes >= 1 << 20
    number = (20 if quick else 100) if big else (200 if quick else 2000)

    def rlmesh_decode() -> Any:
        return rj.asarray(tensor)

    def rlmesh_reply() -> Any:
        header = parse_header(header_frame)
        return decode_body(header.body, [tensor], rj.asarray)[0]

    def hand_copy() -> Any:
        return jnp.asarray(np.frombuffer(payload, np.float32).reshape(shape))

    def public_dlpack() -> Any:
        return jnp.from_dlpack(tensor)

    ready = rj.asarray(tensor)
    row: dict[str, Any] = {"size": label, "policy": policy_name}
    row["policy_only_us"] = _median_us(lambda: int(policy(ready)), number)
    for name, decode in (
        ("rlmesh", rlmesh_decode),
        ("copy", hand_copy),
        ("from_dlpack", public_dlpack),
    ):
        row[f"{name}_decode_us"] = _median_us(decode, number)
        row[f"{name}_to_action_us"] = _median_us(lambda d=decode: int(policy(d())), number)
    row["rlmesh_reply_decode_us"] = _median_us(rlmesh_reply, number)
    row["rlmesh_zero_copy"] = rlmesh_decode().unsafe_buffer_pointer() == tensor.data_ptr
    return row


# -- decode inside a jitted lax.scan -----------------------------------------------------------


def bench_scan(quick: bool) -> list[dict[str, Any]]:

    return [_scan_row(label, shape, quick) for label, shape in SIZES.items()]


def _scan_row(label: str, shape: tuple[int, ...], quick: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from jax.experimental import io_callback

    import rlmesh.jax as rj
    from rlmesh.tensor import Tensor

    source = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    payload = source.tobytes()
    tensor = Tensor.from_numpy(source)
    policy, policy_name = _policy_for(shape)
    result = jax.ShapeDtypeStruct(shape, jnp.float32)
    steps = 20 if source.nbytes >= 1 << 20 else 200

    host_paths = {
        "rlmesh": lambda: np.asarray(rj.asarray(tensor)),
        "copy": lambda: np.asarray(jnp.asarray(np.frombuffer(payload, np.float32).reshape(shape))),
        "no_decode": lambda: source,
    }
    row: dict[str, Any] = {"size": label, "policy": policy_name, "steps": steps}
    for name, host in host_paths.items():

        def callback(token: Any, host: Callable[[], Any] = host) -> Any:
            return host()

        @jax.jit
        def rollout(token: Any, callback: Callable[..., Any] = callback) -> Any:
            def body(carry: Any, _: None) -> Any:
                obs = io_callback(callback, result, carry, ordered=True)
                action = policy(obs)
                return carry + action, action

            return jax.lax.scan(body, token, None, length=steps)

        run = lambda rollout=rollout: jax.block_until_ready(rollout(jnp.int32(0)))
        repeat = 3 if quick else 7
        row[f"{name}_per_step_us"] = _median_us(run, 1, repeat) / steps
    row["rlmesh_minus_no_decode_us"] = row["rlmesh_per_step_us"] - row["no_decode_per_step_us"]
    row["copy_minus_no_decode_us"] = row["copy_per_step_us"] - row["no_decode_per_step_us"]
    return row


# -- full round trips over tcp ------------------------------------------------------------------

ORIGINAL_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, os, statistics, sys, time, warnings
    warnings.simplefilter("ignore")
    import gymnasium as gym, numpy as np, jax, jax.numpy as jnp
    from gymnasium import spaces
    import rlmesh, rlmesh.jax as rj
    shape, dtype, iterations = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    class FixedObsEnv(gym.Env):
        def __init__(self):
            low, high = (0, 255) if dtype == "uint8" else (-1.0, 1.0)
            self.observation_space = spaces.Box(low, high, tuple(shape), np.dtype(dtype))
            self.action_space = spaces.Discrete(2)
            rng = np.random.default_rng(0)
            self._obs = (rng.integers(0, 256, tuple(shape), dtype=np.uint8) if dtype == "uint8"
                         else rng.uniform(-1, 1, tuple(shape)).astype(dtype))
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed); return self._obs, {}
        def step(self, action):
            return self._obs, 1.0, False, False, {}
    def serve(pipe):  # the server runs in its own process, as ours does
        server = rlmesh.EnvServer(FixedObsEnv(), "tcp://127.0.0.1:0")
        pipe.send(server.address)
        server.serve()
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=serve, args=(child,), daemon=True)
    process.start()
    address = parent.recv()
    policy = jax.jit(lambda o: (jnp.mean(o.astype(jnp.float32)) > 0).astype(jnp.int32))
    env = rj.RemoteEnv(address)
    obs, _ = env.reset(seed=0)
    def once():
        o = env.step(1)[0]; return int(policy(o))
    for _ in range(30): once()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter_ns(); once(); samples.append((time.perf_counter_ns() - t) / 1000)
    print(json.dumps({"median_us": statistics.median(samples)}), flush=True)
    process.kill()
    os._exit(0)  # skip interpreter teardown of the native runtime
    """
)


def _original_roundtrip(shape: tuple[int, ...], dtype: str, iterations: int) -> float | None:
    import json

    from benchmarks.original_rlmesh import run_script

    result = run_script(ORIGINAL_SCRIPT, json.dumps(list(shape)), dtype, str(iterations), timeout=300)
    return None if result is None else float(result["median_us"])


def bench_roundtrip(quick: bool, with_original: bool) -> list[dict[str, Any]]:

    return [
        _roundtrip_row(label, shape, dtype, quick, with_original) for label, (shape, dtype) in ROUNDTRIP_KINDS.items()
    ]


def _interleaved(calls: dict[str, Callable[[], Any]], iterations: int, warmup: int = 30) -> dict[str, float]:
    """Median microseconds per call; the calls take turns in blocks so machine noise hits them alike.

    Blocks of back-to-back calls (as a training or evaluation loop makes them) let each peer
    reach its steady state; a lone call after the machine idled pays for cold caches and
    wake-ups, whoever makes it (see the README).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter_ns
    block = 20
    for _ in range(max(1, iterations // block)):
        for name, call in calls.items():
            bucket = samples[name]
            for _ in range(block):
                start = clock()
                call()
                bucket.append((clock() - start) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def _roundtrip_row(label: str, shape: tuple[int, ...], dtype: str, quick: bool, with_original: bool) -> dict[str, Any]:
    import jax.numpy as jnp
    import zmq

    import rlmesh.jax as rj
    from rlmesh.codec import encode_message

    _, reduction = _policies()
    iterations = 100 if quick else 400
    row: dict[str, Any] = {"observation": label, "policy": "mean reduction"}
    kwargs = [f"shape={list(shape)}", f'dtype="{dtype}"']
    args = [item for kwarg in kwargs for item in ("--kwarg", kwarg)]
    bench_dir = str(Path(__file__).resolve().parent)
    obs = FixedObsEnv(list(shape), dtype)._obs
    frames = encode_message("ok", 1, (obs, 1.0, False, False, {}))
    server = rlmesh_server("decode_latency:make_fixed_env", *args, pythonpath=[bench_dir])
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(server)
        env = stack.enter_context(rj.RemoteEnv(address))
        raw_address = stack.enter_context(raw_echo_server())
        # The same env behind a unix socket, stepped over the shared-memory fast path.
        unix_dir = stack.enter_context(tempfile.TemporaryDirectory())
        unix_server = rlmesh_server(
            "decode_latency:make_fixed_env", *args, "--address", f"unix://{unix_dir}/env.sock", pythonpath=[bench_dir]
        )
        fast = stack.enter_context(rj.RemoteEnv(stack.enter_context(unix_server)))
        assert fast._group.members[0].connection.uses_shared_memory, "the fast path was not negotiated"
        fast.reset(seed=0)
        env.reset(seed=0)
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(raw_address)
        socket.send_multipart([frames[0], obs.tobytes()])  # primes the echo peer's payload
        socket.recv_multipart()

        def raw() -> Any:
            socket.send(b"a")
            return socket.recv_multipart(copy=False)

        def raw_copy_policy() -> Any:
            reply = raw()
            array = np.frombuffer(reply[1].buffer, dtype).reshape(shape)
            return reduction(None, jnp.asarray(array)).item()

        medians = _interleaved(
            {
                "raw_zmq_us": raw,
                "rlmesh_step_us": lambda: env.step(1),
                "raw_copy_policy_us": raw_copy_policy,
                "rlmesh_step_policy_us": lambda: reduction(None, env.step(1)[0]).item(),
                "fast_path_step_us": lambda: fast.step(1),
                "fast_path_step_policy_us": lambda: reduction(None, fast.step(1)[0]).item(),
            },
            iterations,
        )
        socket.send(b"stop")
        socket.close()
    row.update(medians)
    row["step_vs_raw"] = row["rlmesh_step_us"] / row["raw_zmq_us"]
    row["fast_path_vs_raw"] = row["fast_path_step_us"] / row["raw_zmq_us"]
    row["with_policy_vs_raw"] = row["rlmesh_step_policy_us"] / row["raw_copy_policy_us"]
    row["original_0_1_0_step_policy_us"] = _original_roundtrip(shape, dtype, iterations) if with_original else None
    return row


# -- jit_step --------------------------------------------------------------------------------------


def bench_jit_step(quick: bool) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp

    import rlmesh.jax as rj
    from rlmesh.integrations.jit_step import JitVectorEnv

    steps = 200
    params = _mlp_params(4)

    @jax.jit
    def policy(obs: Any) -> Any:
        w1, w2, w3 = params
        return jnp.argmax(jnp.tanh(jnp.tanh(obs @ w1) @ w2) @ w3, axis=-1).astype(jnp.int32)

    with rlmesh_server("CartPole-v1", "--num-envs", "4") as address, rj.RemoteVectorEnv(address) as env:
        jenv = JitVectorEnv(env)

        @jax.jit
        def rollout(handle: Any) -> Any:
            handle, obs = jenv.reset(handle, seed=0)

            def body(carry: Any, _: None) -> Any:
                handle, obs = carry
                handle, step = jenv.step(handle, policy(obs))
                return (handle, step.observation), step.reward

            return jax.lax.scan(body, (handle, obs), None, length=steps)

        def python_loop() -> None:
            obs, _ = env.reset(seed=0)
            for _ in range(steps):
                obs = env.step(policy(obs))[0]

        def scan_loop() -> None:
            jax.block_until_ready(rollout(jenv.handle()))

        repeat = 3 if quick else 7
        python_us = _median_us(python_loop, 1, repeat) / steps
        scan_us = _median_us(scan_loop, 1, repeat) / steps
        with rj.RemoteVectorEnv(address, validate_actions=False) as unchecked:

            def unchecked_loop() -> None:
                obs, _ = unchecked.reset(seed=0)
                for _ in range(steps):
                    obs = unchecked.step(policy(obs))[0]

            unchecked_us = _median_us(unchecked_loop, 1, repeat) / steps
    return [
        {
            "env": "CartPole-v1 x4 (tcp, server process)",
            "python_loop_per_step_us": python_us,
            "python_loop_unvalidated_per_step_us": unchecked_us,
            "jit_scan_per_step_us": scan_us,
            "scan_minus_python_us": scan_us - python_us,
        }
    ]


# -- checks ---------------------------------------------------------------------------------------


def bench_checks(quick: bool) -> list[dict[str, Any]]:
    import jax.numpy as jnp

    from rlmesh.checks import make_action_checker
    from rlmesh.specs import (
        BoxSpec,
        DictSpec,
        DiscreteSpec,
    )

    box = BoxSpec((4,), "float32", -1.0, 1.0)
    discrete = DiscreteSpec(2, 0)
    nested = DictSpec({"move": box, "jump": discrete})
    image = BoxSpec((84, 84, 4), "uint8", 0, 255)
    cases = [
        ("Box(4,) jax.Array", make_action_checker(box), jnp.zeros(4, jnp.float32)),
        ("Box(4,) numpy", make_action_checker(box), np.zeros(4, np.float32)),
        ("Discrete(2) int", make_action_checker(discrete), 1),
        ("Discrete(2) jax 0-d", make_action_checker(discrete), jnp.int32(1)),
        ("Discrete(2) x4 jax", make_action_checker(discrete, num_envs=4), jnp.zeros(4, jnp.int32)),
        ("Dict(Box, Discrete) jax", make_action_checker(nested), {"move": jnp.zeros(4), "jump": 1}),
        ("Box(84,84,4) uint8 jax", make_action_checker(image), jnp.zeros((84, 84, 4), jnp.uint8)),
    ]
    number = 2000 if quick else 20000
    return [
        {"action": name, "per_call_us": _median_us(lambda c=check, v=value: c(v), number)}
        for name, check, value in cases
    ]


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, print tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", default="decode,scan,roundtrip,jit_step,checks")
    parser.add_argument("--no-original", action="store_true", help="skip rlmesh 0.1.0")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    import jax

    results: dict[str, Any] = {
        "command": "python -m benchmarks.decode_latency " + " ".join(argv or sys.argv[1:]),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }
    started = time.perf_counter()
    if "decode" in only:
        rows = results["decode"] = bench_decode(args.quick)
        print_table(
            "decode in a Python loop (median us): receive buffer -> jax.Array -> jitted policy action",
            rows,
            [
                "size",
                "policy",
                "rlmesh_decode_us",
                "copy_decode_us",
                "from_dlpack_decode_us",
                "rlmesh_reply_decode_us",
                "policy_only_us",
                "rlmesh_to_action_us",
                "copy_to_action_us",
                "from_dlpack_to_action_us",
                "rlmesh_zero_copy",
            ],
        )
    if "scan" in only:
        rows = results["scan"] = bench_scan(args.quick)
        print_table(
            "decode inside a jitted lax.scan via ordered io_callback (per step, us)",
            rows,
            [
                "size",
                "policy",
                "steps",
                "no_decode_per_step_us",
                "rlmesh_per_step_us",
                "copy_per_step_us",
                "rlmesh_minus_no_decode_us",
                "copy_minus_no_decode_us",
            ],
        )
    if "roundtrip" in only:
        rows = results["roundtrip"] = bench_roundtrip(args.quick, not args.no_original)
        print_table(
            "full step, server in another process, over tcp (fast_path_*: unix + shared memory), median us",
            rows,
            [
                "observation",
                "raw_zmq_us",
                "rlmesh_step_us",
                "step_vs_raw",
                "raw_copy_policy_us",
                "rlmesh_step_policy_us",
                "with_policy_vs_raw",
                "fast_path_step_us",
                "fast_path_vs_raw",
                "fast_path_step_policy_us",
                "original_0_1_0_step_policy_us",
            ],
        )
    if "jit_step" in only:
        rows = results["jit_step"] = bench_jit_step(args.quick)
        print_table(
            "env steps inside jit (rlmesh.integrations.jit_step), 200 steps, per step (us)",
            rows,
            [
                "env",
                "python_loop_per_step_us",
                "python_loop_unvalidated_per_step_us",
                "jit_scan_per_step_us",
                "scan_minus_python_us",
            ],
        )
    if "checks" in only:
        rows = results["checks"] = bench_checks(args.quick)
        print_table("action checks (rlmesh.checks), per call", rows, ["action", "per_call_us"])
    results["wall_s"] = time.perf_counter() - started
    path = write_json("decode_latency", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
