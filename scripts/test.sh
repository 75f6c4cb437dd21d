#!/usr/bin/env bash
# Install, then run the default test suite (no network; uses ../shared/data when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m pytest -q -p no:cacheprovider --timeout=600 "$@"
