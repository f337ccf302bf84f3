"""The Ray instance the Ray tests share: started on first use, once per session, on logical
CPUs enough for two embedding actors beside the reading and writing tasks (this machine has
two cores; the actors are mostly idle in these small jobs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"
CPUS = 3
OBJECT_STORE_BYTES = 256 * 1024 * 1024


def local_ray() -> str:
    """Start Ray here unless it runs; its GCS address, for drivers in other processes. Its
    workers import the test plugins (tests/plugins), as a cluster image with plugins would."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # Ray waits 30 s for its GCS by default: too little on a busy 2-core machine.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), before]))
        try:
            ray.init(
                num_cpus=CPUS,
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        finally:
            if before is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = before
    return ray.get_runtime_context().gcs_address
