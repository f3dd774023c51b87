#!/usr/bin/env bash
# Run a command inside a fresh network namespace where only loopback is up.
#
# Ray binds the machine's external address by default; inside this namespace the only
# interface is `lo`, so every Ray process (GCS, raylets, Serve's proxy) can reach nothing
# but 127.0.0.1. Tests and benchmarks that start Ray run through this wrapper:
#
#     .ci/ray_netns.sh python -m pytest -q tests/integration/test_ray_serve.py
#     .ci/ray_netns.sh python benchmarks/ray_replicas.py --replicas 1,2
#
# `--check` only says whether namespaces work here (exit 0) or not (exit 1, with why).
# Needs root or unprivileged user namespaces (`unshare -rn`).
set -euo pipefail

if [ "${1:-}" = "--check" ]; then
    if out=$(unshare -n sh -c 'ip link set lo up && ip -o addr show' 2>&1); then
        echo "network namespaces work: $(echo "$out" | wc -l) address(es), loopback only"
        exit 0
    fi
    echo "network namespaces unavailable: $out" >&2
    exit 1
fi
[ "$#" -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...] | --check" >&2; exit 2; }
if [ "$(id -u)" -eq 0 ]; then
    exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
exec unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "$@"
