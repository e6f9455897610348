"""The ``rlmesh`` command line: ``rlmesh serve SOURCE --address ...`` and ``rlmesh keygen DIR``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any

from rlmesh.codec import DEFAULT_MAX_MESSAGE_BYTES
from rlmesh.sources import VECTORIZATION_MODES, env_factory, parse_kwargs

if TYPE_CHECKING:
    from rlmesh.server import ServeOptions


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``rlmesh``."""
    parser = argparse.ArgumentParser(prog="rlmesh", description="Serve and drive Gymnasium envs across boundaries.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve an env (one fresh env per client session)")
    serve.add_argument("source", help="Gymnasium id (CartPole-v1, gym://CartPole-v1) or module:callable")
    serve.add_argument(
        "--address",
        default="tcp://127.0.0.1:0",
        help="tcp://host:port, host:port, a port, unix:///path or ipc:///path (port 0 picks one)",
    )
    serve.add_argument("--num-envs", type=int, default=None, help="serve a vector env of N lanes")
    serve.add_argument(
        "--servers",
        type=int,
        default=1,
        help="split the lanes over N server processes; the ready file lists every address",
    )
    serve.add_argument("--vectorization-mode", choices=VECTORIZATION_MODES, default="sync")
    serve.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="keyword argument for the env constructor (repeatable; JSON values)",
    )
    serve.add_argument("--ready-file", default=None, help="write the bound address here once serving")
    serve.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop serving when the process that started this one exits, even if it was killed",
    )
    serve.add_argument("--allow-remote-shutdown", action="store_true")
    serve.add_argument("--idle-timeout", type=float, default=None, help="close sessions idle this many seconds")
    serve.add_argument(
        "--busy-poll-us",
        type=float,
        default=0.0,
        help="after each reply, spin this many microseconds for the next request (CPU for latency)",
    )
    serve.add_argument(
        "--curve-secret-key", default=None, metavar="PATH", help="serve with CURVE: this server's .key_secret file"
    )
    serve.add_argument(
        "--curve-authorized-keys",
        default=None,
        metavar="DIR",
        help="with CURVE, accept only clients whose public key is a *.key file in DIR",
    )
    serve.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow a non-loopback tcp address without CURVE (anyone who reaches it can drive the env)",
    )
    serve.add_argument(
        "--send-tracebacks",
        choices=("auto", "yes", "no"),
        default="auto",
        help="send env tracebacks to clients (auto: only on loopback and unix addresses)",
    )
    serve.add_argument(
        "--isolation",
        choices=("thread", "process"),
        default="thread",
        help="run each session's env in its own thread (default) or child process",
    )
    serve.add_argument("--max-sessions", type=int, default=256, help="most concurrent client sessions")
    serve.add_argument(
        "--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="largest accepted request"
    )
    serve.add_argument(
        "--send-timeout", type=float, default=10.0, help="drop a client that has not read its replies this long"
    )
    serve.add_argument("--quiet", action="store_true", help="do not print the bound address")
    serve.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    ray = serve.add_argument_group("Ray", "host the --servers as Ray actors on a cluster (needs rlmesh[ray])")
    ray.add_argument("--ray", action="store_true", help="start the servers as Ray actors; --address is not used")
    ray.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS or a local Ray)")
    ray.add_argument("--cpus-per-server", type=float, default=1.0, help="Ray CPUs reserved per server")
    keygen = commands.add_parser("keygen", help="write a CURVE keypair (pyzmq certificate format)")
    keygen.add_argument("directory", help="where to write NAME.key (public) and NAME.key_secret (secret, mode 0600)")
    keygen.add_argument("--name", default="rlmesh", help="file stem of the keypair (default: rlmesh)")
    return parser


# Optional modules and the extra that brings each, for errors that name what to install.
EXTRAS = {
    "gymnasium": "gymnasium",
    "jax": "jax",
    "jaxlib": "jax",
    "chex": "jax",
    "flax": "flax",
    "docker": "sandbox",
    "ray": "ray",
}


def describe_error(error: BaseException) -> str:
    """One line for a CLI error; a missing optional module names the extra that brings it."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.split(".")[0]
        if top in EXTRAS:
            return f'{top} is not installed; install it with: pip install "rlmesh[{EXTRAS[top]}]"'
    return f"{type(error).__name__}: {error}" if not str(error) else str(error)


def display_address(bound: str, requested: str) -> str:
    """The bound address in the scheme the user wrote (``unix://`` stays ``unix://``)."""
    if requested.startswith("unix://") and bound.startswith("ipc://"):
        return "unix://" + bound[len("ipc://") :]
    return bound


def keygen_command(args: argparse.Namespace) -> int:
    """Run ``rlmesh keygen``; returns the exit code."""
    from rlmesh.security import generate_keypair, load_public_key

    public, secret = generate_keypair(args.directory, args.name)
    print(f"public key:  {public}  ({load_public_key(public).decode()})")
    print(f"secret key:  {secret}  (keep it private)")
    return 0


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The :class:`~rlmesh.ServeOptions` that ``rlmesh serve``'s flags ask for."""
    from rlmesh.server import ServeOptions

    return ServeOptions(
        allow_remote_shutdown=args.allow_remote_shutdown,
        idle_timeout_seconds=args.idle_timeout,
        busy_poll_seconds=args.busy_poll_us / 1e6,
        isolation=args.isolation,
        max_sessions=args.max_sessions,
        max_message_bytes=args.max_message_bytes,
        send_timeout_seconds=args.send_timeout,
        curve_secret_key=args.curve_secret_key,
        curve_authorized_keys=args.curve_authorized_keys,
        allow_insecure=args.allow_insecure,
        send_tracebacks={"auto": None, "yes": True, "no": False}[args.send_tracebacks],
    )


def serve_command(args: argparse.Namespace) -> int:
    """Run ``rlmesh serve``; returns the exit code."""
    from rlmesh.server import EnvServer

    if args.ray:
        return ray_serve_command(args)
    if args.servers != 1:
        from rlmesh.launch import serve_split, without_options

        others = without_options(
            args.argv, ["--servers", "--num-envs", "--address", "--ready-file"], ["--quiet", "--exit-with-parent"]
        )
        return serve_split(
            others,
            num_envs=args.num_envs,
            servers=args.servers,
            address=args.address,
            ready_file=args.ready_file,
            quiet=args.quiet,
            exit_with_parent=args.exit_with_parent,
        )
    factory = env_factory(
        args.source, num_envs=args.num_envs, vectorization_mode=args.vectorization_mode, kwargs=parse_kwargs(args.kwarg)
    )
    options = serve_options(args)
    server = EnvServer(factory, args.address, options=options)

    def stop(signum: int, frame: Any) -> None:
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.exit_with_parent:
        from rlmesh.launch import watch_parent

        watch_parent(server.shutdown)
    if args.ready_file:
        temporary = f"{args.ready_file}.tmp"
        with open(temporary, "w") as handle:
            handle.write(server.address + "\n")
        os.replace(temporary, args.ready_file)
    if not args.quiet:
        lanes = f"{server.contract.num_envs} lanes" if server.contract.num_envs is not None else "one env per client"
        address = display_address(server.address, args.address)
        print(f"rlmesh: serving {server.contract.id} ({lanes}) on {address}", flush=True)
    server.serve()
    return 0


def ray_serve_command(args: argparse.Namespace) -> int:
    """Run ``rlmesh serve --ray``: K servers as Ray actors until SIGTERM/SIGINT; returns the exit code."""
    import threading

    from rlmesh.integrations.ray import launch_servers
    from rlmesh.launch import split_lanes

    servers = launch_servers(
        args.source,
        num_servers=args.servers,
        num_envs=split_lanes(args.num_envs, args.servers) if args.num_envs is not None else None,
        vectorization_mode=args.vectorization_mode,
        env_kwargs=parse_kwargs(args.kwarg),
        num_cpus_per_server=args.cpus_per_server,
        ray_address=args.ray_address,
        serve_options=serve_options(args),
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    with servers:
        if args.ready_file:
            temporary = f"{args.ready_file}.tmp"
            with open(temporary, "w") as handle:
                handle.write("".join(address + "\n" for address in servers.addresses))
            os.replace(temporary, args.ready_file)
        if not args.quiet:
            each = "one env per client" if args.num_envs is None else f"{args.num_envs} lanes in all"
            where = " ".join(servers.addresses)
            print(f"rlmesh: serving {args.source} on {len(servers)} Ray servers ({each}): {where}", flush=True)
        while not stopped.wait(0.5):
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlmesh`` command."""
    logging.basicConfig(level=logging.INFO, format="rlmesh %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # after "serve": passed on to each process of --servers
    # Like ``python -m``: a ``module:callable`` source resolves from the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.command == "keygen":
        try:
            return keygen_command(args)
        except (OSError, ValueError) as error:
            print(f"rlmesh keygen: error: {error}", file=sys.stderr)
            return 2
    if args.command == "serve":
        try:
            return serve_command(args)
        except Exception as error:
            if args.debug:
                traceback.print_exc()
            print(f"rlmesh serve: error: {describe_error(error)} (--debug shows the traceback)", file=sys.stderr)
            return 2
    return 2  # pragma: no cover - argparse enforces the subcommand
