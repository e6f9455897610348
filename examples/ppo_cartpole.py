"""PPO on CartPole-v1 with a Flax actor-critic and Optax, stepping envs served by rlmesh.

Run ``python examples/ppo_cartpole.py`` to start a local env server (8 CartPole lanes in a
background process) and train against it. Other env backends, with everything else equal:

* ``--address tcp://host:port`` uses an already running rlmesh endpoint,
* ``--sandbox`` serves the env from a :class:`rlmesh.jax.SandboxVectorEnv`,
* ``--local`` steps an in-process ``gymnasium.make_vec`` env (the comparison baseline),
* ``--jit-rollout`` collects each rollout inside ``lax.scan`` through the jit step callback.

The run writes ``metrics.json``, ``learning_curve.png`` and ``params.msgpack`` into
``--out-dir`` (default ``runs/ppo_cartpole/<timestamp>``) and ends with a deterministic
(argmax) evaluation over 20 seeds with ``rlmesh.jax.Model.run``. The PPO pieces live in
``rlmesh.integrations.ppo``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax.training.train_state import TrainState
from rlmesh.integrations.ppo import (
    LossConfig,
    PythonCollector,
    UpdateConfig,
    actor_critic_for,
    episode_returns,
    initial_state,
    make_greedy_fn,
    make_optimizer,
    make_scan_collector,
    make_update_fn,
)
from tqdm import tqdm

import rlmesh.jax


@dataclasses.dataclass
class Args:
    """Command-line arguments; each field becomes ``--field-name``."""

    # --- run ---
    seed: int = 1
    """Seed of the env lanes, the network initialisation and action sampling."""
    total_steps: int = 500_000
    """Training budget in env steps (summed over lanes)."""
    env_id: str = "CartPole-v1"
    """Gymnasium env id (used by the embedded server, --local and --sandbox)."""
    out_dir: str = ""
    """Output folder; empty means runs/ppo_cartpole/<timestamp>."""
    progress: bool = True
    """Show a tqdm progress bar."""

    # --- env backend ---
    address: str = ""
    """Train against an already running rlmesh endpoint at this address."""
    sandbox: bool = False
    """Serve the env from a rlmesh.jax.SandboxVectorEnv."""
    local: bool = False
    """Step an in-process gymnasium.make_vec env instead of a remote one."""
    jit_rollout: bool = False
    """Collect rollouts inside lax.scan through the JAX backend's jit step callback."""

    # --- collect ---
    num_envs: int = 8
    """Parallel env lanes (the embedded server, --local and --sandbox create this many)."""
    num_steps: int = 128
    """Vector steps per rollout; one update consumes num_envs * num_steps transitions."""

    # --- advantage ---
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""

    # --- update ---
    learning_rate: float = 5e-4
    """Adam learning rate at the start of training."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    clip_coef: float = 0.2
    """PPO surrogate (and value) clipping epsilon."""
    clip_vloss: bool = True
    """Clip the value loss around the behaviour values."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""

    # --- evaluation ---
    eval_episodes: int = 20
    """Seeds (one episode each) of the final deterministic evaluation."""
    eval_seed: int = 10_000
    """First evaluation seed; seeds are eval_seed .. eval_seed + eval_episodes - 1."""
    stop_return: float = 500.0
    """Stop early once a deterministic evaluation reaches this mean return (0 disables)."""
    check_return: float = 475.0
    """Recent training return that triggers an early-stop evaluation."""
    check_every: int = 5
    """Minimum updates between two early-stop evaluations."""


def _field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the docstring that follows it in the class body."""
    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def parse_args(argv: list[str] | None = None) -> Args:
    """Build an argparse parser from :class:`Args` and parse ``argv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    docs = _field_docs(Args)
    for field in dataclasses.fields(Args):
        flag = "--" + field.name.replace("_", "-")
        help_ = f"{docs.get(field.name, '')} (default: {field.default})"
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            parser.add_argument(flag, type=kind, default=field.default, help=help_)
    return Args(**vars(parser.parse_args(argv)))


@contextlib.contextmanager
def _embedded_server(env_id: str, num_envs: int) -> Iterator[str]:
    """Serve ``env_id`` from a background ``python -m rlmesh serve`` process; yield its address."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        cmd = [sys.executable, "-m", "rlmesh", "serve", env_id, "--num-envs", str(num_envs),
               "--address", "tcp://127.0.0.1:0", "--ready-file", str(ready), "--quiet"]
        proc = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 60.0
            while not (ready.exists() and ready.read_text().strip()):
                if proc.poll() is not None:
                    raise RuntimeError(f"env server exited with code {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError("env server did not become ready within 60 s")
                time.sleep(0.05)
            yield ready.read_text().strip()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def open_env(args: Args) -> Iterator[Any]:
    """The only backend-specific code: yield a vector env for the selected backend."""
    if args.local:
        import gymnasium

        env = gymnasium.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync")
        with contextlib.closing(env):
            yield env
        return

    if args.sandbox:
        env = rlmesh.jax.SandboxVectorEnv(args.env_id, args.num_envs,
                                          vectorization_mode="sync", rlmesh_package="local")
        with contextlib.closing(env):
            yield env
    elif args.address:
        with contextlib.closing(rlmesh.jax.RemoteVectorEnv(args.address)) as env:
            yield env
    else:
        with _embedded_server(args.env_id, args.num_envs) as address, contextlib.closing(
            rlmesh.jax.RemoteVectorEnv(address)
        ) as env:
            yield env


def _action_transform(space: Any, xp: Any) -> Any:
    """Actions for ``env.step`` (``xp`` is ``np``, or ``jnp`` inside jit): Box gets clipped."""
    if getattr(space, "n", None) is not None:
        return xp.asarray
    low, high, shape = np.asarray(space.low), np.asarray(space.high), tuple(space.shape)
    return lambda a: xp.clip(xp.asarray(a).reshape((-1, *shape)), low, high)


def _jit_rollout_collector(env: Any, apply_fn: Any, args: Args) -> tuple[Any, Any]:
    """A ``lax.scan`` collector stepping ``env`` through ordered callbacks, and its handle."""
    if args.local:
        raise SystemExit("--jit-rollout steps an rlmesh endpoint; drop --local")
    from rlmesh.integrations.jit_step import JitVectorEnv

    jenv = JitVectorEnv(env)

    def step_fn(handle: Any, action: jax.Array) -> tuple[Any, ...]:
        handle, out = jenv.step(handle, action)
        return handle, out.observation, out.reward, out.terminated, out.truncated

    to_env = _action_transform(env.single_action_space, jnp)
    return make_scan_collector(apply_fn, step_fn, args.num_steps, to_env), jenv.handle()


def save_learning_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Plot recent mean training return against env steps into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(h["env_steps"], h["recent_return"]) for h in history if h["recent_return"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        ax.plot(*zip(*pts, strict=True))
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean episodic return (recent episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(args: Args) -> dict[str, Any]:
    """Train PPO with ``args``; write outputs and return the summary dict."""
    t_start = time.perf_counter()
    out_dir = Path(args.out_dir or f"runs/ppo_cartpole/{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = args.num_envs * args.num_steps
    num_iterations = max(1, args.total_steps // batch_size)
    mode = ("local" if args.local else "sandbox" if args.sandbox
            else "address" if args.address else "embedded")

    with open_env(args) as env:
        if int(env.num_envs) != args.num_envs:
            args.num_envs = int(env.num_envs)
            batch_size = args.num_envs * args.num_steps
            num_iterations = max(1, args.total_steps // batch_size)
        obs, _ = env.reset(seed=args.seed)
        model = actor_critic_for(env.single_action_space)
        init_key, collect_key, update_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
        apply_fn = lambda params, x: model.apply({"params": params}, x)
        params = model.init(init_key, jnp.asarray(obs))["params"]
        tx = make_optimizer(args.learning_rate, args.max_grad_norm,
                            num_iterations * args.num_epochs * args.num_minibatches,
                            args.anneal_lr)
        state = TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
        update = make_update_fn(UpdateConfig(
            num_epochs=args.num_epochs, num_minibatches=args.num_minibatches,
            gamma=args.gamma, gae_lambda=args.gae_lambda,
            loss=LossConfig(args.clip_coef, args.ent_coef, args.vf_coef,
                            args.clip_vloss, args.norm_adv),
        ))
        to_env_action = _action_transform(env.single_action_space, np)
        env_state = None
        if args.jit_rollout:
            collect, env_state = _jit_rollout_collector(env, apply_fn, args)
        else:
            collector = PythonCollector(env, apply_fn, to_env_action)
            collect = lambda p, s: collector.collect(p, s, args.num_steps)
        greedy = make_greedy_fn(apply_fn)
        eval_seeds = list(range(args.eval_seed, args.eval_seed + args.eval_episodes))

        def run_eval(params: Any) -> np.ndarray:
            """Deterministic (argmax) returns, one episode per evaluation seed."""
            model = rlmesh.jax.Model(predict_batch_fn=lambda o: to_env_action(greedy(params, o)))
            result = model.run(env, seeds=eval_seeds, progress=False)
            return np.asarray([episode.reward for episode in result.episodes])

        cstate = initial_state(obs, collect_key, env_state)
        running = jnp.zeros(args.num_envs, jnp.float32)
        lengths = jnp.zeros(args.num_envs, jnp.int32)
        recent: deque[float] = deque(maxlen=20)
        history: list[dict[str, Any]] = []
        checks: list[dict[str, float]] = []
        env_steps, steps_to_475, last_check, stopped_early = 0, None, -args.check_every, False
        eval_time = 0.0
        t_train = time.perf_counter()
        bar = tqdm(total=num_iterations * batch_size, unit="step", unit_scale=True,
                   disable=not args.progress, dynamic_ncols=True)
        for it in range(num_iterations):
            rollout, cstate = collect(state.params, cstate)
            rets, _, running, lengths = episode_returns(rollout, running, lengths)
            update_key, sub = jax.random.split(update_key)
            state, metrics = update(state, rollout, sub)
            env_steps += batch_size
            dones = np.asarray(rollout.terminations | rollout.truncations)
            recent.extend(np.asarray(rets)[dones].tolist())
            recent_return = float(np.mean(recent)) if recent else None
            if steps_to_475 is None and recent_return is not None and recent_return >= 475.0:
                steps_to_475 = env_steps
            elapsed = time.perf_counter() - t_train - eval_time
            row = {"iteration": it + 1, "env_steps": env_steps, "time_s": elapsed,
                   "sps": env_steps / elapsed, "recent_return": recent_return,
                   **{k: float(v) for k, v in metrics.items()}}
            history.append(row)
            bar.update(batch_size)
            bar.set_postfix(ret=f"{recent_return or 0.0:.1f}", loss=f"{row['loss']:.3f}")

            if (args.stop_return > 0 and recent_return is not None
                    and recent_return >= args.check_return and it - last_check >= args.check_every
                    and it + 1 < num_iterations):
                last_check = it
                t_eval = time.perf_counter()
                score = float(np.mean(run_eval(state.params)))
                eval_time += time.perf_counter() - t_eval
                checks.append({"env_steps": env_steps, "eval_return": score})
                if score >= args.stop_return:
                    stopped_early = True
                    break
                obs, _ = env.reset()
                cstate = initial_state(obs, cstate.key, cstate.env_state)
                running, lengths = jnp.zeros_like(running), jnp.zeros_like(lengths)
        bar.close()
        train_time = time.perf_counter() - t_train - eval_time
        final_returns = run_eval(state.params)

    (out_dir / "params.msgpack").write_bytes(flax.serialization.to_bytes(state.params))
    summary = {
        "mode": mode + ("+jit-rollout" if args.jit_rollout else ""),
        "seed": args.seed,
        "env_steps": env_steps,
        "train_time_s": train_time,
        "early_stop_eval_time_s": eval_time,
        "wall_time_s": time.perf_counter() - t_start,
        "sps": env_steps / train_time,
        "steps_to_475": steps_to_475,
        "stopped_early": stopped_early,
        "early_stop_checks": checks,
        "final_eval_mean": float(np.mean(final_returns)),
        "final_eval_returns": final_returns.tolist(),
        "final_loss": history[-1]["loss"],
    }
    save_learning_curve(history, out_dir / "learning_curve.png",
                        f"PPO {args.env_id} ({summary['mode']}, seed {args.seed})")
    summary["wall_time_s"] = time.perf_counter() - t_start
    (out_dir / "metrics.json").write_text(json.dumps(
        {"args": dataclasses.asdict(args), "summary": summary, "history": history}, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    """Entry point: parse flags, train, print the summary."""
    args = parse_args(argv)
    summary = train(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "final_eval_returns"}, indent=1))


if __name__ == "__main__":
    main()
