"""PPO on CartPole-v1 with a Flax actor-critic and Optax, stepping envs served by rlmesh.

Run ``python examples/ppo_cartpole.py`` to serve 8 CartPole lanes from a background
``rlmesh serve`` process on a unix socket (so the client takes the shared-memory fast path)
and train against it: the fastest remote setup measured for an env as cheap as CartPole on a
small machine (see the README's PPO figures). Other env backends, with everything else equal:

* ``--servers K`` splits the lanes over K server processes, stepped in parallel,
* ``--ray K`` splits the lanes over K servers hosted as Ray actors (``rlmesh[ray]``; a private
  local Ray, or the cluster at ``$RAY_ADDRESS``),
* ``--double-buffer`` drives the lanes as two groups and runs one group's policy while the
  other group steps (two sessions of one server, or two halves of ``--servers``, Ray servers or
  addresses); it pays off when an env step costs more than a policy call,
* ``--address tcp://host:port[,tcp://...]`` uses already running rlmesh endpoints,
* ``--sandbox`` serves the env from a :class:`rlmesh.jax.SandboxVectorEnv`,
* ``--local`` steps an in-process ``gymnasium.make_vec`` env (the comparison baseline),
* ``--jit-rollout`` collects each rollout inside ``lax.scan`` through the jit step callback.

The run writes ``metrics.json``, ``learning_curve.png`` and ``params.msgpack`` into
``--out-dir`` (default ``runs/ppo_cartpole/<timestamp>``) and ends with a deterministic
(argmax) evaluation over 20 seeds with ``rlmesh.jax.Model.run`` and a summary. Ctrl-C stops
training, saves what it has and skips the final evaluation. The PPO pieces live in
``rlmesh.integrations.ppo``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
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
from tqdm import tqdm

import rlmesh.jax
import rlmesh.numpy
from rlmesh.integrations.ppo import (
    DoubleBufferedCollector,
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
from rlmesh.integrations.ppo.cpu import run_small_policies_inline
from rlmesh.launch import launch_server, split_lanes


def arg(default: Any, help: str) -> Any:
    """A dataclass field whose ``help`` becomes the flag's ``--help`` text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Args:
    """Command-line arguments; each field becomes ``--field-name``."""

    # --- run ---
    seed: int = arg(1, "Seed of the env lanes, the network initialisation and action sampling.")
    total_steps: int = arg(500_000, "Training budget in env steps (summed over lanes).")
    env_id: str = arg("CartPole-v1", "Gymnasium env id (used by the embedded servers, --local and --sandbox).")
    out_dir: str = arg("", "Output folder; empty means runs/ppo_cartpole/<timestamp>.")
    progress: bool = arg(True, "Show a tqdm progress bar.")

    # --- env backend ---
    servers: int = arg(1, "Server processes the embedded endpoint's lanes are split over.")
    double_buffer: bool = arg(
        False,
        "Drive the lanes as two groups, one group's policy running while the other steps (one "
        "server: two sessions of half the lanes each; several endpoints: their two halves).",
    )
    ray: int = arg(0, "Split the lanes over this many Ray-hosted servers instead of --servers processes (0: no Ray).")
    address: str = arg("", "Train against already running rlmesh endpoints (comma-separated addresses).")
    sandbox: bool = arg(False, "Serve the env from a rlmesh.jax.SandboxVectorEnv.")
    local: bool = arg(False, "Step an in-process gymnasium.make_vec env instead of a remote one.")
    jit_rollout: bool = arg(False, "Collect rollouts inside lax.scan through the JAX backend's jit step callback.")

    # --- collect ---
    num_envs: int = arg(8, "Parallel env lanes (the embedded servers, --local and --sandbox create this many).")
    num_steps: int = arg(128, "Vector steps per rollout; one update consumes num_envs * num_steps transitions.")

    # --- advantage ---
    gamma: float = arg(0.99, "Discount factor.")
    gae_lambda: float = arg(0.95, "GAE lambda.")

    # --- update ---
    learning_rate: float = arg(5e-4, "Adam learning rate at the start of training.")
    anneal_lr: bool = arg(True, "Decay the learning rate linearly to 0 over the run.")
    num_epochs: int = arg(4, "Passes over each rollout.")
    num_minibatches: int = arg(4, "Minibatches per epoch.")
    clip_coef: float = arg(0.2, "PPO surrogate (and value) clipping epsilon.")
    clip_vloss: bool = arg(True, "Clip the value loss around the behaviour values.")
    norm_adv: bool = arg(True, "Normalise advantages per minibatch.")
    ent_coef: float = arg(0.01, "Entropy bonus weight.")
    vf_coef: float = arg(0.5, "Value loss weight.")
    max_grad_norm: float = arg(0.5, "Global gradient-norm clip.")

    # --- evaluation ---
    eval_episodes: int = arg(20, "Seeds (one episode each) of the final deterministic evaluation.")
    eval_seed: int = arg(10_000, "First evaluation seed; seeds are eval_seed .. eval_seed + eval_episodes - 1.")
    stop_return: float = arg(500.0, "Stop early once a deterministic evaluation reaches this mean return (0 disables).")
    check_return: float = arg(475.0, "Recent training return that triggers an early-stop evaluation.")
    check_every: int = arg(5, "Minimum updates between two early-stop evaluations.")


def parse_args(argv: list[str] | None = None) -> Args:
    """Build an argparse parser from :class:`Args` and parse ``argv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kinds = {"int": int, "float": float, "str": str}
    for field in dataclasses.fields(Args):
        flag = "--" + field.name.replace("_", "-")
        help_ = f"{field.metadata['help']} (default: {field.default})"
        if str(field.type) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_)
        else:
            parser.add_argument(flag, type=kinds[str(field.type)], default=field.default, help=help_)
    args = Args(**vars(parser.parse_args(argv)))
    if args.servers < 1:
        parser.error(f"--servers must be at least 1, got {args.servers}")
    if args.ray < 0 or args.ray > args.num_envs:
        parser.error(f"--ray {args.ray} must be between 0 and --num-envs {args.num_envs}")
    if args.servers > args.num_envs:
        parser.error(f"--servers {args.servers} is more than --num-envs {args.num_envs}; give each server a lane")
    if args.double_buffer and (args.local or args.sandbox or args.jit_rollout):
        parser.error("--double-buffer drives two groups of rlmesh endpoints; drop --local, --sandbox or --jit-rollout")
    if args.double_buffer and args.address and len(_addresses(args)) < 2:
        parser.error(f"--double-buffer needs two or more --address endpoints to split in two, got {args.address!r}")
    if args.double_buffer and args.ray == 1:
        parser.error("--double-buffer needs two or more Ray servers to split into two groups; use --ray 2")
    if args.double_buffer and not (args.address or args.ray) and args.servers == 1 and args.num_envs % 2:
        parser.error(
            f"--double-buffer on one server gives two sessions half the lanes each; --num-envs {args.num_envs} is odd"
        )
    return args


def _addresses(args: Args) -> list[str]:
    return [a.strip() for a in args.address.split(",") if a.strip()]


def _mode(args: Args) -> str:
    if args.ray and not (args.local or args.sandbox or args.address):
        return "ray"
    return "local" if args.local else "sandbox" if args.sandbox else "address" if args.address else "embedded"


@contextlib.contextmanager
def open_envs(args: Args) -> Iterator[list[Any]]:
    """The only backend-specific code: yield the vector env, or two lane groups to double-buffer."""
    if args.local:
        import gymnasium

        env = gymnasium.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync")
        with contextlib.closing(env):
            yield [env]
        return
    if args.sandbox:
        env = rlmesh.jax.SandboxVectorEnv(args.env_id, args.num_envs, vectorization_mode="sync", rlmesh_package="local")
        with contextlib.closing(env):
            yield [env]
        return
    with contextlib.ExitStack() as stack:
        if args.address:
            addresses = _addresses(args)
        elif args.ray:
            from rlmesh.integrations.ray import launch_servers

            servers = launch_servers(args.env_id, num_servers=args.ray, num_envs=split_lanes(args.num_envs, args.ray))
            addresses = list(stack.enter_context(servers).addresses)
        else:
            # A unix socket: same-host clients get the shared-memory fast path.
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ppo-cartpole-"))
            address = f"unix://{folder}/env.sock"
            # Double-buffered on one server: two sessions (two groups) of half the lanes each.
            one_server_groups = args.double_buffer and args.servers == 1
            lanes = args.num_envs // 2 if one_server_groups else args.num_envs
            server = launch_server(args.env_id, num_envs=lanes, servers=args.servers, address=address)
            addresses = stack.enter_context(server).addresses
            if one_server_groups:
                addresses = addresses * 2
        half = len(addresses) // 2
        groups = [addresses[:half], addresses[half:]] if args.double_buffer else [addresses]
        # The NumPy client: the jitted policy takes NumPy observations as they are and the rollout
        # is stacked on the host, so importing every leaf into JAX per step would only add work.
        # The policy's samples are valid actions by construction (the server still checks them).
        yield [
            stack.enter_context(contextlib.closing(rlmesh.numpy.RemoteVectorEnv(group, validate_actions=False)))
            for group in groups
        ]


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
    """Train PPO with ``args``; write outputs and return the summary dict.

    Ctrl-C stops training: what was learned so far is saved, the final evaluation skipped.
    """
    t_start = time.perf_counter()
    out_dir = Path(args.out_dir or f"runs/ppo_cartpole/{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)

    with open_envs(args) as envs:
        env = envs[0]
        args.num_envs = sum(int(e.num_envs) for e in envs)
        batch_size = args.num_envs * args.num_steps
        num_iterations = max(1, args.total_steps // batch_size)
        model = actor_critic_for(env.single_action_space)
        init_key, collect_key, update_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
        apply_fn = lambda params, x: model.apply({"params": params}, x)
        to_env_action = _action_transform(env.single_action_space, np)
        env_state = None
        if len(envs) == 2:
            collector: Any = DoubleBufferedCollector(envs, apply_fn, to_env_action)
            reset = collector.reset
            collect = lambda p, s: collector.collect(p, s, args.num_steps)
        else:
            reset = lambda seed=None: env.reset(seed=seed)[0]
            if args.jit_rollout:
                collect, env_state = _jit_rollout_collector(env, apply_fn, args)
            else:
                collector = PythonCollector(env, apply_fn, to_env_action)
                collect = lambda p, s: collector.collect(p, s, args.num_steps)
        obs = reset(args.seed)
        params = model.init(init_key, jnp.asarray(obs))["params"]
        num_updates = num_iterations * args.num_epochs * args.num_minibatches
        tx = make_optimizer(args.learning_rate, args.max_grad_norm, num_updates, args.anneal_lr)
        state = TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
        update = make_update_fn(
            UpdateConfig(
                num_epochs=args.num_epochs,
                num_minibatches=args.num_minibatches,
                gamma=args.gamma,
                gae_lambda=args.gae_lambda,
                loss=LossConfig(args.clip_coef, args.ent_coef, args.vf_coef, args.clip_vloss, args.norm_adv),
            )
        )
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
        env_steps, steps_to_475, last_check, stopped_early, interrupted = 0, None, -args.check_every, False, False
        eval_time = 0.0
        t_train = time.perf_counter()
        total = num_iterations * batch_size
        bar = tqdm(total=total, unit="step", unit_scale=True, disable=not args.progress, dynamic_ncols=True)
        try:
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
                row = {
                    "iteration": it + 1,
                    "env_steps": env_steps,
                    "time_s": elapsed,
                    "sps": env_steps / elapsed,
                    "recent_return": recent_return,
                    **{k: float(v) for k, v in metrics.items()},
                }
                history.append(row)
                bar.update(batch_size)
                bar.set_postfix(ret=f"{recent_return or 0.0:.1f}", loss=f"{row['loss']:.3f}")

                if (
                    args.stop_return > 0
                    and recent_return is not None
                    and recent_return >= args.check_return
                    and it - last_check >= args.check_every
                    and it + 1 < num_iterations
                ):
                    last_check = it
                    t_eval = time.perf_counter()
                    score = float(np.mean(run_eval(state.params)))
                    eval_time += time.perf_counter() - t_eval
                    checks.append({"env_steps": env_steps, "eval_return": score})
                    if score >= args.stop_return:
                        stopped_early = True
                        bar.write(
                            f"stopping early at {env_steps:,} env steps: the deterministic evaluation "
                            f"scored {score:.1f} >= --stop-return {args.stop_return:g}"
                        )
                        break
                    obs = reset()
                    cstate = initial_state(obs, cstate.key, cstate.env_state)
                    running, lengths = jnp.zeros_like(running), jnp.zeros_like(lengths)
        except KeyboardInterrupt:
            interrupted = True
            bar.write(f"interrupted at {env_steps:,} env steps; saving what was learned, skipping the evaluation")
        bar.close()
        train_time = time.perf_counter() - t_train - eval_time
        final_returns = np.zeros(0) if interrupted else run_eval(state.params)

    (out_dir / "params.msgpack").write_bytes(flax.serialization.to_bytes(state.params))
    summary = {
        "mode": _mode(args) + ("+jit-rollout" if args.jit_rollout else ""),
        "servers": None if args.local or args.sandbox or args.address else args.ray or args.servers,
        "double_buffer": len(envs) == 2,
        "num_envs": args.num_envs,
        "seed": args.seed,
        "env_steps": env_steps,
        "train_time_s": train_time,
        "early_stop_eval_time_s": eval_time,
        "wall_time_s": time.perf_counter() - t_start,
        "sps": env_steps / train_time if train_time > 0 else 0.0,
        # Without the first iteration, which compiles the policy, the rollout assembly and the update.
        "steady_sps": steady_sps(history),
        "steps_to_475": steps_to_475,
        "stopped_early": stopped_early,
        "interrupted": interrupted,
        "early_stop_checks": checks,
        "final_eval_mean": float(np.mean(final_returns)) if final_returns.size else None,
        "final_eval_returns": final_returns.tolist(),
        "final_loss": history[-1]["loss"] if history else None,
        "out_dir": str(out_dir),
    }
    if history:
        save_learning_curve(
            history, out_dir / "learning_curve.png", f"PPO {args.env_id} ({summary['mode']}, seed {args.seed})"
        )
    summary["wall_time_s"] = time.perf_counter() - t_start
    (out_dir / "metrics.json").write_text(
        json.dumps({"args": dataclasses.asdict(args), "summary": summary, "history": history}, indent=1)
    )
    return summary


def steady_sps(history: list[dict[str, Any]]) -> float | None:
    """Env steps/s after the first iteration (None with fewer than two iterations)."""
    if len(history) < 2:
        return None
    first, last = history[0], history[-1]
    seconds = last["time_s"] - first["time_s"]
    return (last["env_steps"] - first["env_steps"]) / seconds if seconds > 0 else None


def describe(summary: dict[str, Any], args: Args) -> str:
    """A few lines for a person: what ran, how it went, where the files are."""
    backend = summary["mode"]
    if summary["servers"]:
        backend += f", {summary['servers']} server{'s' * (summary['servers'] > 1)}"
    if summary["double_buffer"]:
        backend += ", double-buffered"
    if summary["interrupted"]:
        outcome = "interrupted (Ctrl-C); no final evaluation"
    else:
        returns = summary["final_eval_returns"]
        outcome = (
            f"final evaluation: mean return {summary['final_eval_mean']:.1f} over {len(returns)} seeds "
            f"(min {min(returns):.0f}, max {max(returns):.0f})"
        )
    end = "stopped early (evaluation reached --stop-return)" if summary["stopped_early"] else "full budget"
    return "\n".join(
        [
            f"PPO {args.env_id}, seed {summary['seed']} ({backend}, {summary['num_envs']} lanes)",
            f"  trained {summary['env_steps']:,} env steps in {summary['train_time_s']:.1f} s "
            f"({summary['sps']:,.0f} steps/s; {end}); {summary['wall_time_s']:.1f} s in all",
            f"  {outcome}",
            f"  files in {summary['out_dir']}: metrics.json, learning_curve.png, params.msgpack",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse flags, train, print the summary; returns the exit code."""
    args = parse_args(argv)
    # A policy this small runs faster in the calling thread than on XLA's dispatch thread and
    # intra-op pool: the wake-ups per call cost more than the network (see
    # rlmesh.integrations.ppo.cpu). Every mode, --local included, runs with these settings.
    run_small_policies_inline()
    try:
        summary = train(args)
    except KeyboardInterrupt:  # before training started (servers starting, compiling)
        print("interrupted before training started; nothing to save", file=sys.stderr)
        return 130
    print(describe(summary, args))
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
