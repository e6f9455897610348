#!/usr/bin/env bash
# Prepare a Docker engine and a local Python base image for the sandbox tests.
#
# Sourced (`. .ci/sandbox_setup.sh`) or run. Steps:
#   1. apt-get install docker.io and debootstrap when missing;
#   2. start `dockerd --bridge=none --iptables=false` in the background if `docker info` fails,
#      and wait (up to 60 s) for it to answer;
#   3. build rlmesh/python-base:3.11 with scripts/build_base_image.sh (skipped when present);
#      sandboxes use that image by default, no environment variable needed.
# No image registry is needed. Failures print a reason and return non-zero.

_rlmesh_sandbox_setup() {
    local root tag log i
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tag="rlmesh/python-base:3.11"

    local missing=()
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "sandbox setup: installing ${missing[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            $(printf '%s\n' "${missing[@]}" | sort -u)) || {
            echo "sandbox setup: apt-get install failed" >&2
            return 1
        }
    fi

    if ! docker info >/dev/null 2>&1; then
        log="${TMPDIR:-/tmp}/rlmesh-dockerd.log"
        echo "sandbox setup: starting dockerd (log: $log)"
        nohup dockerd --bridge=none --iptables=false >"$log" 2>&1 &
        for i in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        if ! docker info >/dev/null 2>&1; then
            echo "sandbox setup: dockerd did not answer within 60 s; last log lines:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
    fi
    echo "sandbox setup: docker engine ready"

    "$root/scripts/build_base_image.sh" "$tag" || {
        echo "sandbox setup: building the base image $tag failed" >&2
        return 1
    }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _rlmesh_sandbox_setup
else
    _rlmesh_sandbox_setup
fi
