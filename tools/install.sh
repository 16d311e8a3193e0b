#!/usr/bin/env bash
# Installs the Debian packages zipar links against and builds the release binary (.build/release/zipar).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! dpkg -s libopenblas-dev libpng-dev libjpeg-dev pkg-config >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  # `env`: with SUDO empty (root) a leading VAR=value would be taken for the command name
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev libpng-dev libjpeg-dev pkg-config
fi
swift build -c release --product zipar
