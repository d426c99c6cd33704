#!/usr/bin/env bash
# Install, then run the main job on the embedded default (SQLite, embedded broker, child worker):
# a synthetic corpus goes through the real API and worker and comes back as a Parquet export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec pc2 demo "$@"
