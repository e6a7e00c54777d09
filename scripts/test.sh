#!/usr/bin/env bash
# The whole test suite: unit, property, simulator (many seeds) and integration tests.
# Tests build with opt-level 2 (see [profile.test]) so that the seed sweeps run quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features "$@"
