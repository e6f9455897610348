"""``launch_servers``: one env server per Ray actor, addresses back, lifetime tied to a handle."""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlmesh.errors import RemoteEnvError
from rlmesh.integrations.ray._actor import ServerActor
from rlmesh.server import ServeOptions
from rlmesh.sources import VECTORIZATION_MODES

# Ray placement-group strategies by the name launch_servers accepts.
PLACEMENTS = {"spread": "SPREAD", "pack": "PACK", "strict_spread": "STRICT_SPREAD", "strict_pack": "STRICT_PACK"}
_STOP_GRACE_S = 30.0  # a sandboxed server removes its container on stop
_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


class ServerLaunchError(RemoteEnvError):
    """A Ray-hosted server could not start; carries the remote error's type and traceback."""


class RayServers:
    """Handle on env servers running as Ray actors; closes them on :meth:`shutdown` or collection.

    Attributes:
        addresses: One endpoint per server, in launch order (stable across calls).
        node_ids: The Ray node each server runs on, in the same order.
        pids: The worker process of each server, in the same order.
        container_ids: The Docker container of each sandboxed server ("" when not sandboxed).
        actors: The Ray actor handles, in the same order.
    """

    def __init__(
        self,
        actors: list[Any],
        infos: list[dict[str, Any]],
        group: Any,
        owns_ray: bool,
    ) -> None:
        self.actors: tuple[Any, ...] = tuple(actors)
        self.addresses: tuple[str, ...] = tuple(info["address"] for info in infos)
        self.node_ids: tuple[str, ...] = tuple(info["node_id"] for info in infos)
        self.pids: tuple[int, ...] = tuple(info["pid"] for info in infos)
        self.container_ids: tuple[str, ...] = tuple(info["container_id"] for info in infos)
        self._finalizer = weakref.finalize(self, _stop_all, list(actors), group, owns_ray)

    @property
    def closed(self) -> bool:
        """Whether :meth:`shutdown` has run (or the handle was collected)."""
        return not self._finalizer.alive

    def shutdown(self) -> None:
        """Close every server (its envs and sandbox first, then the actor); idempotent."""
        self._finalizer()

    def __enter__(self) -> RayServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __len__(self) -> int:
        return len(self.addresses)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ", ".join(self.addresses)
        return f"RayServers({state})"


def launch_servers(
    source: str,
    *,
    num_servers: int,
    num_envs: int | Sequence[int] | None = None,
    vectorization_mode: str = "sync",
    env_kwargs: Mapping[str, Any] | None = None,
    num_cpus_per_server: float = 1.0,
    placement: str = "spread",
    ray_address: str | None = None,
    sandbox: bool = False,
    launch_timeout_seconds: float = 120.0,
    serve_options: ServeOptions | None = None,
    **sandbox_kwargs: Any,
) -> RayServers:
    """Start ``num_servers`` env servers as Ray actors and return their addresses.

    Each actor builds the env on its node, binds an :class:`~rlmesh.EnvServer` to the node's
    address with port 0 and reports the bound address. Servers serve a fresh env (or vector env)
    per client session, like ``rlmesh serve``.

    Args:
        source: A Gymnasium id (``CartPole-v1``) or ``module:callable`` returning an env; the
            module must be importable on every node.
        num_servers: How many servers (actors) to start.
        num_envs: Lanes per server (a vector env with NEXT_STEP autoreset), one count per server,
            or None for a single env per client session.
        vectorization_mode: ``"sync"`` or ``"async"`` lanes inside each server.
        env_kwargs: Keyword arguments for the env constructor.
        num_cpus_per_server: Ray CPUs reserved for each server.
        placement: ``"spread"`` servers over nodes, ``"pack"`` them onto few, or the strict forms
            ``"strict_spread"`` / ``"strict_pack"`` (see Ray placement groups).
        ray_address: Cluster to join (``"auto"``, ``"ray://head:10001"``, ...). None uses Ray when
            this process already initialised it, ``$RAY_ADDRESS`` when set, else starts a local Ray
            bound to 127.0.0.1 that the handle shuts down with the servers.
        sandbox: Run each server's env inside a Docker sandbox on its node
            (``rlmesh.SandboxVectorEnv``, or ``SandboxEnv`` when ``num_envs`` is None); the actor
            relays the sandbox's endpoint on the node's address.
        launch_timeout_seconds: Give up when the cluster cannot place or start the servers in time.
        serve_options: How each server serves (:class:`~rlmesh.ServeOptions`). A node address
            other than loopback needs CURVE keys here (``curve_secret_key``, a path that must
            exist on every node, and ``curve_authorized_keys``, a directory there or a list of
            client public keys) or ``allow_insecure=True``; sandboxed servers use only these
            security settings.
        **sandbox_kwargs: Sandbox options (``packages``, ``base_image``, ``rlmesh_package``, ...).

    Returns:
        A :class:`RayServers` handle; use it as a context manager or call ``shutdown()``.

    Raises:
        ValueError / TypeError: for bad arguments, naming the value.
        ServerLaunchError: a server failed to build its env (unknown id, missing package on a node).
        TimeoutError: the cluster could not place or start the servers within the timeout.

    Example:
        >>> with launch_servers("CartPole-v1", num_servers=2, num_envs=8) as servers:  # doctest: +SKIP
        ...     env = rlmesh.numpy.RemoteVectorEnv(servers.addresses)
    """
    lanes = _lanes_per_server(num_envs, num_servers)
    _check_arguments(source, num_servers, vectorization_mode, num_cpus_per_server, placement)
    if serve_options is not None and not isinstance(serve_options, ServeOptions):
        raise TypeError(f"serve_options must be a rlmesh.ServeOptions, got {type(serve_options).__name__}")
    if sandbox_kwargs and not sandbox:
        raise TypeError(f"sandbox options {sorted(sandbox_kwargs)} need sandbox=True")
    kwargs = dict(env_kwargs or {})
    if not all(isinstance(key, str) for key in kwargs):
        raise TypeError(f"env_kwargs keys must be strings, got {list(kwargs)!r}")
    owns_ray = _connect(ray_address, num_servers * num_cpus_per_server)
    actors: list[Any] = []
    group = None
    try:
        group = _reserve(num_servers, num_cpus_per_server, placement, launch_timeout_seconds)
        remote_actor = ray.remote(ServerActor)
        for index in range(num_servers):
            options: dict[str, Any] = {"num_cpus": num_cpus_per_server, "max_restarts": 0}
            if group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=index
                )
            actors.append(remote_actor.options(**options).remote())
        sandbox_options = dict(sandbox_kwargs) if sandbox else None
        pending = [
            actor.start.remote(source, count, vectorization_mode, kwargs, sandbox_options, serve_options)
            for actor, count in zip(actors, lanes, strict=True)
        ]
        infos = _gather(pending, source, launch_timeout_seconds)
    except BaseException:
        _stop_all(actors, group, owns_ray)
        raise
    return RayServers(actors, infos, group, owns_ray)


def _lanes_per_server(num_envs: Any, num_servers: Any) -> list[int | None]:
    if not isinstance(num_servers, int) or isinstance(num_servers, bool) or num_servers < 1:
        raise ValueError(f"num_servers must be a positive integer, got {num_servers!r}")
    counts = list(num_envs) if isinstance(num_envs, Sequence) and not isinstance(num_envs, str) else None
    if counts is None:
        counts = [num_envs] * num_servers
    elif len(counts) != num_servers:
        raise ValueError(f"num_envs has {len(counts)} counts for {num_servers} servers: {num_envs!r}")
    for count in counts:
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise ValueError(f"num_envs must be None, a positive integer or one per server, got {num_envs!r}")
    return counts


def _check_arguments(
    source: Any,
    num_servers: int,
    vectorization_mode: Any,
    num_cpus_per_server: Any,
    placement: Any,
) -> None:
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a Gymnasium id or module:callable string, got {source!r}")
    if vectorization_mode not in VECTORIZATION_MODES:
        raise ValueError(f"vectorization_mode {vectorization_mode!r} is not one of {VECTORIZATION_MODES}")
    if isinstance(num_cpus_per_server, bool) or not isinstance(num_cpus_per_server, int | float):
        raise TypeError(f"num_cpus_per_server must be a number, got {num_cpus_per_server!r}")
    if not 0 <= num_cpus_per_server < math.inf:
        raise ValueError(f"num_cpus_per_server must be >= 0, got {num_cpus_per_server!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} is not one of {tuple(PLACEMENTS)}")


def _connect(ray_address: str | None, cpus_needed: float) -> bool:
    """Make sure Ray is initialised; whether this call started (and so owns) the connection."""
    if ray.is_initialized():
        return False
    if ray_address is None and not os.environ.get("RAY_ADDRESS"):
        # A private local Ray: loopback only, and enough logical CPUs for the servers asked for.
        num_cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed))
        ray.init(
            address="local",
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
        )
    else:
        ray.init(address=ray_address, log_to_driver=False)
    return True


def _reserve(num_servers: int, cpus: float, placement: str, timeout: float) -> Any:
    """A placement group with one bundle per server, ready; None when servers reserve no CPU."""
    if cpus == 0:
        return None
    group = placement_group([{"CPU": cpus}] * num_servers, strategy=PLACEMENTS[placement])
    ready, _ = ray.wait([group.ready()], timeout=timeout)
    if not ready:
        remove_placement_group(group)
        raise TimeoutError(
            f"Ray could not place {num_servers} servers of {cpus:g} CPU each ({placement!r}) within {timeout}s; "
            f"the cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs in "
            f"{len([node for node in ray.nodes() if node.get('Alive')])} nodes"
        )
    return group


def _gather(pending: list[Any], source: str, timeout: float) -> list[dict[str, Any]]:
    """Wait for every server's start; raise the first failure with its remote error."""
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout)
    infos = []
    for index, ref in enumerate(pending):
        if ref not in ready:
            raise TimeoutError(f"server {index} of {len(pending)} did not start {source!r} within {timeout}s")
        try:
            infos.append(ray.get(ref))
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, BaseException) else None
            kind = type(cause) if cause is not None else type(error)
            raise ServerLaunchError(
                f"server {index} of {len(pending)} could not start {source!r}: "
                f"{kind.__name__}: {cause if cause is not None else error}",
                remote_type=f"{kind.__module__}.{kind.__qualname__}",
                remote_traceback=_ANSI_ESCAPES.sub("", str(error)),
            ) from None
        except ray.exceptions.RayActorError as error:
            raise ServerLaunchError(
                f"server {index} of {len(pending)} died while starting {source!r}: {error}",
                remote_type=type(error).__name__,
            ) from None
    return infos


def _stop_all(actors: list[Any], group: Any, owns_ray: bool) -> None:
    """Close servers gracefully (bounded), kill their actors, free the placement group."""
    if not ray.is_initialized():
        return
    try:
        stops = [actor.stop.remote() for actor in actors]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=_STOP_GRACE_S)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if group is not None:
            remove_placement_group(group)
    finally:
        actors.clear()
        if owns_ray:
            ray.shutdown()
