"""Run an image build through the Docker API and read its output stream."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlmesh.errors import SandboxError

__all__ = ["BuildOutcome", "SandboxBuildError", "parse_build_stream", "run_build"]

_log = logging.getLogger("rlmesh.sandbox")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
TAIL_LINES = 60


class SandboxBuildError(SandboxError):
    """The sandbox image could not be built; the message carries the failing step's output."""


@dataclass
class BuildOutcome:
    """What a build stream said.

    Attributes:
        image_id: The built image id, when the stream announced one.
        step: The last ``Step i/n : ...`` line seen (the failing step on error).
        output: Output lines of that step.
        error: The error message, or None on success.
    """

    image_id: str | None = None
    step: str = "(before the first step)"
    output: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def tail(self) -> str:
        """The last output lines of the current step."""
        return "\n".join(self.output[-TAIL_LINES:])


def parse_build_stream(chunks: Iterable[Mapping[str, Any]]) -> BuildOutcome:
    """Follow the decoded JSON chunks of a classic ``docker build`` stream."""
    outcome = BuildOutcome()
    for chunk in chunks:
        if "stream" in chunk:
            text = str(chunk["stream"])
            for line in _ANSI.sub("", text).splitlines():
                if line.startswith("Step "):
                    outcome.step, outcome.output = line.strip(), []
                elif line.strip() and not line.startswith(("Removing intermediate", " ---> ")):
                    outcome.output.append(line.rstrip())
            _log.debug("build: %s", text.rstrip())
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            outcome.image_id = aux["ID"]
        if "error" in chunk:
            outcome.error = (chunk.get("errorDetail") or {}).get("message") or str(chunk["error"])
    return outcome


def run_build(
    client: Any, context: io.BytesIO, tag: str, labels: Mapping[str, str], buildargs: Mapping[str, str]
) -> BuildOutcome:
    """Build ``context`` (a tar with a Dockerfile) as ``tag`` on the host network; never pulls.

    Returns:
        The parsed stream, with ``image_id`` filled from the tag when the stream had none.
    """
    stream = client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        labels=dict(labels),
        rm=True,
        forcerm=True,
        pull=False,
        network_mode="host",
        buildargs=dict(buildargs),
        decode=True,
    )
    outcome = parse_build_stream(stream)
    if outcome.error is None and outcome.image_id is None:
        try:
            outcome.image_id = client.images.get(tag).id
        except Exception:
            outcome.error = "the build produced no image"
    return outcome
