#!/usr/bin/env bash
# The test command: brings what the tests need, then runs every suite.
# Docker suites skip loudly where no Docker engine answers, unless
# FLOTILLA_REQUIRE_DOCKER=1 (as in CI), which makes a missing engine a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Docker suites run containers from an image built FROM scratch with the
# host's static busybox (there is no registry to pull from).
if [ ! -x /bin/busybox ] && [ ! -x /usr/bin/busybox ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  else
    echo "tests/run.sh: install busybox-static (sudo apt-get install busybox-static) for the Docker suites" >&2
  fi
fi

if command -v cargo-nextest >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
