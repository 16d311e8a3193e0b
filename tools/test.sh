#!/usr/bin/env bash
# Installs what the build needs (Debian packages), builds zipar and runs the whole test suite.
# The golden fixtures are read from ../shared next to the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! dpkg -s libopenblas-dev libpng-dev libjpeg-dev pkg-config >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev libpng-dev libjpeg-dev pkg-config
fi
swift build -c release --product zipar
swift test
