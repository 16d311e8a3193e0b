#!/usr/bin/env bash
# Installs what the build needs (Debian packages, and torch for the Python converter tests),
# builds zipar in release mode, runs the Swift test suite and the converter tests.
# The golden fixtures are read from ../shared next to the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh                 # apt packages + release build
swift build --build-tests   # the CLI tests run the debug zipar binary
swift test --skip-build
# The shipped default model generates once from the README's prompt (writes to a temp dir).
if [ -f models/default/config.json ]; then
  out=$(mktemp -d)
  .build/release/zipar generate --prompt "a red circle above a blue square" --window 8 -o "$out/default.png" --quiet
  # and its binarized variant (1-bit block weights, the W1A8 kernel)
  .build/release/zipar generate --model models/default-w1 --prompt "a red circle above a blue square" --window 8 -o "$out/w1.png" --quiet
  rm -rf "$out"
fi
# Converter and training-pipeline tests (torch 2.13.0+cpu comes from the machine's local wheel folder).
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q -r tools/requirements.txt
python3 -c "import pytest" 2>/dev/null || python3 -m pip install -q pytest
python3 -m pytest -q tools/tests
