"""The machine a benchmark ran on: CPU model, cores, RAM, OS, kernel, Python (and SIPp when present).

Every benchmark prints this block first, so a figure is never read without its machine::

    python bench/_machine.py
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> str:
    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    physical: int | None = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    text = f"{logical} logical"
    if physical:
        text += f", {physical} physical"
    if usable != logical:
        text += f", {usable} usable by this process"
    return text


def _ram() -> str:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return f"{vm.total / 2**30:.1f} GiB ({vm.available / 2**30:.1f} GiB available)"
    except ImportError:
        pass
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    return f"{int(match.group(1)) / 2**20:.1f} GiB" if match else "unknown"


def _os() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _sipp() -> str | None:
    sipp = shutil.which("sipp")
    if sipp is None:
        return None
    try:
        out = subprocess.run([sipp, "-v"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return sipp
    match = re.search(r"SIPp v?([\w.\-]+)", out.stdout + out.stderr)
    return match.group(1).rstrip(".") if match else sipp


def machine_info() -> dict[str, str]:
    info = {
        "cpu": _cpu_model(),
        "cores": _cores(),
        "ram": _ram(),
        "os": _os(),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    }
    sipp = _sipp()
    if sipp:
        info["sipp"] = sipp
    return info


def format_machine(info: dict[str, str] | None = None) -> str:
    info = info if info is not None else machine_info()
    width = max(len(k) for k in info)
    return "\n".join(f"  {key:<{width}} : {value}" for key, value in info.items())


def print_machine(title: str = "machine") -> None:
    print(f"{title}:")
    print(format_machine(), flush=True)


if __name__ == "__main__":
    print_machine()
