"""Facts about the machine and tools, for benchmark reports and bundle provenance."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """Processor model name with its family / model numbers (Linux /proc/cpuinfo: a VM's name alone, such as
    "AMD EPYC", does not tell one generation from another), else the machine type."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and fields:
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            ident = ", ".join(f"{key} {fields[key]}" for key in ("cpu family", "model") if fields.get(key))
            return f"{fields['model name']} ({ident})" if ident else fields["model name"]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """CPU, core count, memory and OS of this machine."""
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(), "python": platform.python_version()}


def tool_versions(*names: str) -> dict[str, str]:
    """Installed versions of distributions (absent ones omitted)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (VmHWM), where the OS tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
