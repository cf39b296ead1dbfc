"""CPU thread defaults: how many threads decode, and how many evaluate prompts and images.

Decoding is bound by memory bandwidth (one thread per physical core); prompt batches and the vision
encoder are compute-bound (every usable CPU). The measurements are in docs/engine.md ("CPU defaults
(measured)").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class CpuDefaults:
    logical: int  # CPUs this process may run on (its affinity mask)
    physical: int  # distinct cores among them
    decode_threads: int
    batch_threads: int

    @property
    def why(self) -> str:
        smt = "" if self.physical == self.logical else f" ({self.logical} hardware threads)"
        return (
            f"{self.decode_threads} for decoding (one per physical core: decode is memory-bound), "
            f"{self.batch_threads} for prompts and images (every CPU{smt}: compute-bound)"
        )


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int], sys_cpu: Path = _SYS_CPU) -> int:
    """Distinct (package, core) pairs among ``cpus``; the CPU count where topology is unknown."""
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def cpu_defaults() -> CpuDefaults:
    cpus = _allowed_cpus()
    logical = max(1, len(cpus))
    physical = max(1, min(logical, physical_cores(cpus)))
    return CpuDefaults(logical=logical, physical=physical, decode_threads=physical, batch_threads=logical)
