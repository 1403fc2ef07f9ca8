#!/usr/bin/env bash
# Set up (if needed), then run one edge node with config/edge.yaml; extra arguments go to the edge.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/smartpbx edge --config config/edge.yaml "$@"
