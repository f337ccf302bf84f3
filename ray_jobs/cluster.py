"""The Ray cluster a job runs on: one named by address, or one started on this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
import ray.data


@dataclass
class Workers:
    """How many workers embed (one actor each, one model each) and what each holds: a GPU
    when the cluster has GPUs, else ``cpus`` cores."""

    count: int = 1
    cpus: float = 1.0
    gpus: bool = False

    def actor_args(self) -> dict[str, Any]:
        """Resources of one embedding actor. Ray Data restarts a lost actor and retries the
        batch it held (its pools default to max_restarts=-1, max_task_retries=-1), so a job
        loses no rows to a lost worker; what a lost worker wrote is never committed, so no
        row is doubled either."""
        return {"num_gpus": 1} if self.gpus else {"num_cpus": self.cpus}


def connect(address: str, workers: Workers) -> Workers:
    """Join the cluster at ``address`` (``ray://head:10001``, ``head:6379`` or ``auto``), or,
    with none, start one here: as many logical CPUs as cores, and at least one more than the
    workers, so that reading and writing tasks run beside the embedding actors. Returns the
    workers, on GPUs where the cluster has them."""
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # Ray gives its GCS 30 s to start by default: a busy small machine needs more.
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
            cpus = max(os.cpu_count() or 1, workers.count * int(workers.cpus + 0.999) + 1)
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job prints its own progress (progress.py)
    # Rows land in the table in the source's order, as a streamed add through the gateway.
    context.execution_options.preserve_order = True
    # A failed batch raises what the embedding raised (a typed error that says what to fix),
    # not Ray's wrapper alone.
    context.raise_original_map_exception = True
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    return Workers(workers.count, workers.cpus, gpus)
