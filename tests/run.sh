#!/usr/bin/env bash
# The test command: brings what the tests need, then runs every suite.
# Docker suites skip loudly where no Docker engine answers, unless
# FLOTILLA_REQUIRE_DOCKER=1 (as in CI), which makes a missing engine a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v cargo-nextest >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
