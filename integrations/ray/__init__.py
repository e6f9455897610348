"""Env servers on a Ray cluster: place them, learn their addresses, tie their lifetime to a run.

``launch_servers`` starts one Ray actor per server; each builds the env (a Gymnasium id or
``module:callable``, as ``rlmesh serve`` accepts), binds an :class:`~rlmesh.EnvServer` to its
node's address and reports it. Drive them all with one ``RemoteVectorEnv``:

    >>> from rlmesh.integrations.ray import launch_servers          # doctest: +SKIP
    >>> with launch_servers("CartPole-v1", num_servers=4, num_envs=8) as servers:  # doctest: +SKIP
    ...     env = rlmesh.numpy.RemoteVectorEnv(servers.addresses)

Needs ``pip install "rlmesh[ray]"``. :mod:`.namespace` runs a command inside a network
namespace with nothing but loopback, for a single machine where Ray must not touch the network.
"""

try:
    import ray as _ray  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised by the no-extras import test
    from rlmesh.errors import missing_extra

    raise missing_extra("ray", "ray") from _error

from rlmesh.integrations.ray.launch import PLACEMENTS, RayServers, ServerLaunchError, launch_servers

__all__ = ["PLACEMENTS", "RayServers", "ServerLaunchError", "launch_servers"]
