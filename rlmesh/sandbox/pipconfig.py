"""Collect the host's pip index, proxy and certificate settings for the image build.

The build runs on the host network, so remote indexes and proxies are reachable, but files on
the host are not: a ``file://`` index or a local ``find-links`` directory is skipped (with a
note), and the CA bundle is copied into the build context, because a TLS-intercepting proxy
makes pip fail without it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PipSettings", "host_pip_settings"]

_log = logging.getLogger("rlmesh.sandbox")

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
_CA_ENV_FALLBACKS = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


@dataclass
class PipSettings:
    """pip settings forwarded into the build.

    Attributes:
        index_url: ``--index-url`` or ``None`` for pip's default.
        extra_index_urls: Remote ``--extra-index-url`` values.
        find_links: Remote ``--find-links`` values.
        trusted_hosts: ``--trusted-host`` values.
        default_timeout: ``--default-timeout`` value, if set.
        cert_path: Host CA bundle to copy into the build context, if any.
        proxies: Proxy environment variables, passed as build args (not stored in the image).
        notes: Human-readable notes about settings that were not forwarded.
    """

    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    trusted_hosts: list[str] = field(default_factory=list)
    default_timeout: str | None = None
    cert_path: Path | None = None
    proxies: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def pip_args(self, cert_in_image: str | None) -> list[str]:
        """Command-line options for ``pip install`` inside the build."""
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for url in self.find_links:
            args += ["--find-links", url]
        for host in self.trusted_hosts:
            args += ["--trusted-host", host]
        if self.default_timeout:
            args += ["--default-timeout", self.default_timeout]
        if cert_in_image:
            args += ["--cert", cert_in_image]
        return args


def _pip_config() -> dict[str, str]:
    """``pip config list`` as a dict (``:env:.``/``global.``/``install.`` keys)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    result: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key.strip()] = value.strip().strip("'\"")
    return result


def _lookup(config: dict[str, str], name: str) -> str | None:
    # pip's precedence: environment, then the install section, then global.
    env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if env:
        return env
    for section in (":env:", "install", "global"):
        value = config.get(f"{section}.{name}")
        if value:
            return value
    return None


def _remote(values: str | None, what: str, notes: list[str]) -> list[str]:
    kept = []
    for value in (values or "").split():
        if value.startswith(("http://", "https://")):
            kept.append(value)
        else:
            notes.append(f"skipped {what} {value!r}: host files are not reachable in the build")
    return kept


def host_pip_settings() -> PipSettings:
    """Read the host's pip configuration and environment."""
    config = _pip_config()
    notes: list[str] = []
    index = _remote(_lookup(config, "index-url"), "index-url", notes)
    settings = PipSettings(
        index_url=index[0] if index else None,
        extra_index_urls=_remote(_lookup(config, "extra-index-url"), "extra-index-url", notes),
        find_links=_remote(_lookup(config, "find-links"), "find-links", notes),
        trusted_hosts=(_lookup(config, "trusted-host") or "").split(),
        default_timeout=_lookup(config, "default-timeout"),
        notes=notes,
    )
    cert = _lookup(config, "cert")
    candidates = [cert] if cert else [os.environ.get(var) for var in _CA_ENV_FALLBACKS]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            settings.cert_path = Path(candidate)
            break
    else:
        if cert:
            notes.append(f"skipped cert {cert!r}: file not found")
    settings.proxies = {k: v for k in _PROXY_VARS if (v := os.environ.get(k))}
    for note in notes:
        _log.info("sandbox build: %s", note)
    return settings
