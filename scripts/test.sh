#!/usr/bin/env bash
# The whole test suite: unit, property, simulator (many seeds) and integration tests, then the
# real-NAT lab (hole punching through the regserver across nftables NAT routers in network
# namespaces; needs root, installs nftables/iproute2 if missing; SSS_NAT_LAB=skip skips it).
# Tests build with opt-level 2 (see [profile.test]) so that the seed sweeps run quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features "$@"
bash scripts/nat-lab.sh
