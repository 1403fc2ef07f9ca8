"""Build and load ``librelay.so``, the C data plane of :class:`NativeRelayEngine`.

``python -m pbx_edge.media.native.build`` compiles ``relay.c`` with the system C compiler (``$CC``,
else ``cc``/``gcc``/``clang``) into ``_build/librelay.so`` next to this file. The library is plain C
loaded with :mod:`ctypes`, so it needs no Python headers and survives Python upgrades.

This module also holds the ABI: the ctypes mirrors of the C structs and the function prototypes.
:func:`load_library` refuses a library whose ``relay_abi_version()`` differs from
:data:`ABI_VERSION`, so a stale build is reported as unavailable instead of misread.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ABI_VERSION = 3

SOURCE = Path(__file__).with_name("relay.c")
BUILD_DIR = Path(__file__).with_name("_build")
LIBRARY = BUILD_DIR / "librelay.so"
CFLAGS = ("-O2", "-shared", "-fPIC", "-pthread", "-std=gnu11", "-Wall", "-Wextra")


class BuildError(RuntimeError):
    """The library could not be built (no compiler, or the compiler failed)."""


# --- ABI -----------------------------------------------------------------------------------------


class CSideStats(ctypes.Structure):
    """``struct relay_side_stats``."""

    _fields_ = [
        ("rtp_packets_in", ctypes.c_uint64),
        ("rtp_bytes_in", ctypes.c_uint64),
        ("rtcp_packets_in", ctypes.c_uint64),
        ("rtp_packets_out", ctypes.c_uint64),
        ("rtp_bytes_out", ctypes.c_uint64),
        ("rtcp_packets_out", ctypes.c_uint64),
        ("strangers", ctypes.c_uint64),
        ("send_errors", ctypes.c_uint64),
        ("last_rx", ctypes.c_double),
        ("rtp_latched_port", ctypes.c_uint32),
        ("rtcp_latched_port", ctypes.c_uint32),
        ("rtp_latched_host", ctypes.c_char * 64),
        ("rtcp_latched_host", ctypes.c_char * 64),
    ]


class CStreamStats(ctypes.Structure):
    """``struct relay_stream_stats``: index 0 is side A, 1 side B."""

    _fields_ = [("side", CSideStats * 2)]


class CEngineStats(ctypes.Structure):
    """``struct relay_engine_stats``."""

    _fields_ = [
        ("streams", ctypes.c_uint64),
        ("packets_relayed", ctypes.c_uint64),
        ("bytes_relayed", ctypes.c_uint64),
        ("packets_dropped", ctypes.c_uint64),
        ("tap_drops", ctypes.c_uint64),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    """Set argtypes/restype of every exported function (ctypes would otherwise guess ``int``)."""
    p, u64, i32, u32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_uint32
    table: dict[str, tuple[list[type], type | None]] = {
        "relay_abi_version": ([], i32),
        "relay_create": ([i32, i32, i32, ctypes.POINTER(ctypes.c_int)], p),
        "relay_destroy": ([p], None),
        "relay_add": ([p, u64, ctypes.POINTER(ctypes.c_int)], ctypes.c_int64),
        "relay_remove": ([p, u64], i32),
        "relay_set_remote": ([p, u64, i32, i32, ctypes.c_char_p, u32], i32),
        "relay_set_forwarding": ([p, u64, i32, i32], i32),
        "relay_set_tap": ([p, u64, i32, i32], i32),
        "relay_send": ([p, u64, i32, i32, ctypes.c_char_p, u32], i32),
        "relay_stream_stats": ([p, u64, ctypes.POINTER(CStreamStats)], i32),
        "relay_stats": ([p, ctypes.POINTER(CEngineStats)], None),
        "relay_thread_cpu": ([p, i32], ctypes.c_double),
    }
    for name, (argtypes, restype) in table.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype


# --- build ---------------------------------------------------------------------------------------


def compiler() -> str | None:
    """The C compiler to use: ``$CC`` if set, else the first of cc, gcc, clang on ``PATH``."""
    if cc := os.environ.get("CC"):
        return cc
    for name in ("cc", "gcc", "clang"):
        if found := shutil.which(name):
            return found
    return None


def needs_build() -> bool:
    """True when the library is missing or older than ``relay.c``."""
    return not LIBRARY.exists() or LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime


def build(verbose: bool = True) -> Path:
    """Compile ``relay.c`` into :data:`LIBRARY`; raises :class:`BuildError` on failure.

    The output is written to a temporary file and renamed into place, so a process that has the
    old library mapped keeps a consistent copy.
    """
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set $CC or install cc/gcc/clang, e.g. apt-get install gcc)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".librelay-", suffix=".so", dir=BUILD_DIR)
    os.close(fd)
    command = [*shlex.split(cc), *CFLAGS, "-o", tmp_name, str(SOURCE)]
    if verbose:
        print("building the native relay:", shlex.join(command), flush=True)
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise BuildError(f"cannot run the C compiler {cc!r}: {exc}") from exc
        if result.returncode != 0:
            raise BuildError(f"{cc} failed (exit {result.returncode}):\n{result.stderr}")
        if result.stderr and verbose:
            print(result.stderr, file=sys.stderr, end="")
        os.replace(tmp_name, LIBRARY)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    if verbose:
        print(f"wrote {LIBRARY}", flush=True)
    return LIBRARY


# --- load ----------------------------------------------------------------------------------------

_loaded: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL | None:
    """The built library with its prototypes declared, or None if it is not built or is stale ABI.

    It never builds: compiling at import time would surprise a production process.
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    if sys.platform != "linux" or not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
        _declare(lib)
    except (OSError, AttributeError):
        return None
    if lib.relay_abi_version() != ABI_VERSION:
        return None
    _loaded = lib
    return lib


def available() -> bool:
    """Whether :class:`NativeRelayEngine` can run here (the library is built and loads)."""
    return load_library() is not None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pbx_edge.media.native.build``."""
    del argv
    try:
        build(verbose=True)
    except BuildError as exc:
        print(f"error: cannot build the native relay: {exc}", file=sys.stderr)
        return 1
    if not available():
        print(f"error: built {LIBRARY} but it does not load", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
