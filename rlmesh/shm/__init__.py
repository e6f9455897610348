"""Same-host shared-memory data plane: a mapped region per session, doorbells, the channel.

Negotiated in the handshake for unix-socket endpoints; ZeroMQ keeps the handshake, liveness
and any message too large for the region.
"""

import os

from rlmesh.shm.channel import ClientChannel, ServerChannel, space_bytes
from rlmesh.shm.doorbell import Doorbell, Spinner
from rlmesh.shm.region import Layout, Region, remove_stale

ENVIRONMENT_SWITCH = "RLMESH_SHARED_MEMORY"


def enabled() -> bool:
    """Whether this process may use shared memory: ``RLMESH_SHARED_MEMORY=0`` turns it off.

    The switch applies to clients and servers alike, on top of their own options, so a
    deployment (or a test run) can keep every session on ZeroMQ without code changes.
    """
    return os.environ.get(ENVIRONMENT_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


__all__ = [
    "ENVIRONMENT_SWITCH",
    "ClientChannel",
    "Doorbell",
    "Layout",
    "Region",
    "ServerChannel",
    "Spinner",
    "enabled",
    "remove_stale",
    "space_bytes",
]
