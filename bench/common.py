"""What benchmarks share: the machine description, JSON output, a stack in subprocesses."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from service_kit.cli import running
from service_kit.launch import service_process


def machine() -> str:
    """CPU model and core count (and the GPU, if torch sees one)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = f"{model}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            described += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return described


def emit(
    bench: str,
    measure: str,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float,
    lower_is_better: bool,
) -> None:
    """Print one JSON line. ``ratio`` is ours over the baseline's, so > 1 means we are higher."""
    print(
        json.dumps(
            {
                "bench": bench,
                "measure": measure,
                "value": round(value, 4),
                "unit": unit,
                "baseline": baseline,
                "baseline_value": round(baseline_value, 4),
                "ratio": round(value / baseline_value, 3) if baseline_value else None,
                "lower_is_better": lower_is_better,
                "machine": machine(),
            }
        ),
        flush=True,
    )


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ms = np.asarray(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


@contextmanager
def running_stack(data_dir: Path) -> Iterator[str]:
    """``embedsearch up`` on free ports, as a deployment runs it; yields the gateway URI."""
    with running(str(data_dir)) as address:
        yield f"grpc://{address}"


@contextmanager
def service(module: str, *flags: str) -> Iterator[str]:
    """``python -m <module>`` on a free loopback port until SERVING; yields its address."""
    with service_process(module, *flags) as (address, _):
        yield address
