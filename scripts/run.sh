#!/usr/bin/env bash
# Set up (if needed), then run the product on this machine:
#   1. a local Ray cluster with the AI layer (`serve run ray_config.yaml`: live transcription on
#      ws://127.0.0.1:8000/v1/calls/{call_id}/stream), unless SMARTPBX_AI=0;
#   2. one edge node with config/edge.yaml, streaming answered calls to it (ai.enabled); calls to
#      1100-1400 that nobody answers reach the AI attendant (knowledge base built on the first run);
#      1200 is also the IVR, whose tools reach the sample back-office systems started here
#      (ai_serve/agents/sample_systems.py) unless BILLING_URL points at real ones.
# Extra arguments go to the edge. Ctrl-C stops both. Watch live transcripts from another terminal:
#   .venv/bin/smartpbx watch            (uses data/local-admin-token, made here on first run)
# or: curl -H "Authorization: Bearer $(cat data/local-admin-token)" http://127.0.0.1:8080/api/calls
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

SERVE_PID=""
SYSTEMS_PID=""
stop_ai() {
    if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
        printf '==> stopping the AI layer\n'
        kill -INT "$SERVE_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 1; done
        kill -TERM "$SERVE_PID" 2>/dev/null || true  # Serve's graceful shutdown took too long
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    if [ -n "$SYSTEMS_PID" ]; then
        kill "$SYSTEMS_PID" 2>/dev/null || true
    fi
}
trap stop_ai EXIT

if [ "${SMARTPBX_AI:-1}" != "0" ] && [ -z "${BILLING_URL:-}" ] && [ "${SMARTPBX_SAMPLE_SYSTEMS:-1}" != "0" ]; then
    # The IVR's tools (config/tools.yaml) call billing, CRM and orders systems: without real ones
    # (BILLING_URL unset), the sample ones answer on 127.0.0.1:8090 with sample data, so calling 1200
    # gets a tool-backed answer. Fresh secrets each run, passed to the AI layer's environment.
    rm -f data/sample-systems.env
    mkdir -p data
    .venv/bin/python -m ai_serve.agents.sample_systems --port "${SMARTPBX_SAMPLE_SYSTEMS_PORT:-8090}" \
        --env-file data/sample-systems.env > data/sample-systems.log 2>&1 &
    SYSTEMS_PID=$!
    for _ in $(seq 1 100); do
        [ -s data/sample-systems.env ] && break
        kill -0 "$SYSTEMS_PID" 2>/dev/null || { cat data/sample-systems.log; echo "run.sh: sample systems failed" >&2; exit 1; }
        sleep 0.1
    done
    # shellcheck disable=SC1091
    set -a; . data/sample-systems.env; set +a
    printf '\n==> sample business systems (billing, CRM, orders) on %s\n' "$BILLING_URL"
fi

if [ "${SMARTPBX_AI:-1}" != "0" ] && [ "${SMARTPBX_SAMPLE_KB:-1}" != "0" ] && [ ! -d data/knowledge/qdrant ]; then
    # The attendant answers from the knowledge base: on the first run, build it from the seeded sample
    # call store (4 fictional businesses on extensions 1100-1400; SMARTPBX_SAMPLE_KB=0 skips this).
    printf '\n==> first run: sample call store and its knowledge base (Ray Data job, ~1 min)\n'
    .venv/bin/smartpbx pipeline sample data/sample-store
    .venv/bin/smartpbx pipeline extract --store data/sample-store --from 2025-06-02 --to 2025-06-08
fi

if [ "${SMARTPBX_AI:-1}" != "0" ]; then
    printf '\n==> starting the AI layer (local Ray cluster + Serve app, ~15 s; log: data/serve.log)\n'
    mkdir -p data
    .venv/bin/serve run ray_config.yaml > data/serve.log 2>&1 &
    SERVE_PID=$!
    for second in $(seq 1 120); do
        if .venv/bin/python -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8000/healthz", timeout=1)' \
            2>/dev/null; then
            printf '    AI layer ready after %s s\n' "$second"
            break
        fi
        kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 30 data/serve.log; echo "run.sh: the AI layer failed to start" >&2; exit 1; }
        [ $((second % 5)) -eq 0 ] && printf '    waiting for the AI layer (%s s)\n' "$second"
        sleep 1
    done
    export SMARTPBX__AI__ENABLED=true
fi

if [ -z "${SMARTPBX__ADMIN__TOKENS:-}" ]; then
    # A local admin token for this machine (only its SHA-256 goes into the edge's config).
    mkdir -p data
    if [ ! -s data/local-admin-token ]; then
        (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > data/local-admin-token)
    fi
    digest=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("data/local-admin-token").read().strip().encode()).hexdigest())')
    export SMARTPBX__ADMIN__TOKENS="[{name: local, role: admin, sha256: $digest}]"
    printf '\n    admin token: data/local-admin-token; live transcripts: .venv/bin/smartpbx watch\n'
fi

printf '\n==> starting the edge (config/edge.yaml)\n'
.venv/bin/smartpbx edge --config config/edge.yaml "$@"
