"""The body of a server actor: one EnvServer (or a relay to a sandbox) on the actor's node."""

from __future__ import annotations

import os
from typing import Any


class ServerActor:
    """Hosts one env endpoint inside a Ray worker; Ray wraps it with ``ray.remote`` at launch."""

    def __init__(self) -> None:
        self._server: Any = None
        self._sandbox: Any = None

    def start(
        self,
        source: str,
        num_envs: int | None,
        vectorization_mode: str,
        env_kwargs: dict[str, Any],
        sandbox_kwargs: dict[str, Any] | None,
        options: Any = None,
    ) -> dict[str, Any]:
        """Build the env, bind an endpoint on this node with port 0, and describe it.

        Returns:
            ``{"address", "node_id", "host", "pid", "container_id"}`` of this server (the
            container id is empty unless sandboxed).
        """
        import ray

        host = ray.util.get_node_ip_address()
        if sandbox_kwargs is None:
            from rlmesh.server import EnvServer
            from rlmesh.sources import env_factory

            factory = env_factory(source, num_envs=num_envs, vectorization_mode=vectorization_mode, kwargs=env_kwargs)
            self._server = EnvServer(factory, f"tcp://{host}:0", options=options).start()
        else:
            from rlmesh.integrations.ray.relay import FrameRelay

            self._sandbox = _open_sandbox(source, num_envs, vectorization_mode, env_kwargs, sandbox_kwargs)
            self._server = FrameRelay(f"tcp://{host}:0", self._sandbox.address, options=options).start()
        return {
            "address": self._server.address,
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": host,
            "pid": os.getpid(),
            "container_id": self._sandbox.container_id if self._sandbox is not None else "",
        }

    def stop(self) -> None:
        """Close the endpoint and its envs (and the sandbox container); idempotent."""
        server, self._server = self._server, None
        sandbox, self._sandbox = self._sandbox, None
        try:
            if server is not None:
                server.shutdown()
        finally:
            if sandbox is not None:
                sandbox.close()


def _open_sandbox(
    source: str,
    num_envs: int | None,
    vectorization_mode: str,
    env_kwargs: dict[str, Any],
    sandbox_kwargs: dict[str, Any],
) -> Any:
    import rlmesh

    if num_envs is None:
        return rlmesh.SandboxEnv(source, **sandbox_kwargs, **env_kwargs)
    return rlmesh.SandboxVectorEnv(source, num_envs, vectorization_mode, **sandbox_kwargs, **env_kwargs)
