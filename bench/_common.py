"""Shared by the benchmarks: what machine this ran on, percentiles, one JSON object out.

Every benchmark prints exactly one JSON object on stdout (progress goes to
stderr) and exits non-zero rather than print a number it did not measure.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    versions = {}
    for dist in ("plumb", "grpcio", "protobuf", "SQLAlchemy", "cryptography", "psutil"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "cpu": platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 99)) -> dict[str, float]:
    """p50/p99 (or ``points``) and max of ``values`` (nearest-rank), in the values' unit."""
    if not values:
        raise BenchmarkFailed("no samples were measured")
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {**{f"p{p}": rank(p) for p in points}, "max": ordered[-1], "n": len(ordered)}


class BenchmarkFailed(Exception):
    """The benchmark could not measure what it claims to; it must not print a number."""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(name: str, results: dict[str, Any], targets: dict[str, Any] | None = None) -> None:
    """Print the one JSON object: benchmark name, machine, results, targets."""
    print(
        json.dumps(
            {"benchmark": name, "machine": machine(), "results": results, "targets": targets or {}},
            indent=2,
            sort_keys=True,
        ),
        flush=True,
    )


def main_guard(func: Any) -> None:
    try:
        func()
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
