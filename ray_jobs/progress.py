"""Progress of a job: rows done, rows/s and ETA, printed and reported to Prometheus.

Workers count the rows they finish into one :class:`RowCounter` actor; the driver reads it
every few seconds. Prometheus gets the figures two ways, either or both: the driver serves
``/metrics`` on --metrics-port while the job runs (scraped like the services, port 9453 in
deploy/), and pushes them to a Pushgateway (--pushgateway) at every report and at the end, so a
job shorter than a scrape interval is still recorded.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, start_http_server

# Retried batches (a worker lost mid-batch) are counted twice: the count may pass the total.
REPORT_EVERY_S = 5.0


@ray.remote(num_cpus=0, max_restarts=-1)
class RowCounter:
    """Rows finished by every worker of one job."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += rows

    def get(self) -> int:
        return self.rows


@dataclass
class Reporting:
    """Where progress goes: --metrics-port (-1: not served) and --pushgateway ("": none)."""

    metrics_port: int = -1
    metrics_host: str = "127.0.0.1"
    pushgateway: str = ""
    every_s: float = REPORT_EVERY_S
    out: TextIO = field(default=sys.stdout)


class Progress:
    """Reports one job's progress from a thread of the driver until :meth:`close`."""

    def __init__(self, command: str, table: str, total: int, reporting: Reporting) -> None:
        self.command, self.table, self.total = command, table, total
        self.reporting = reporting
        self.counter = RowCounter.remote()  # type: ignore[attr-defined]
        self.registry = CollectorRegistry()
        labels = ["command", "table"]

        def gauge(name: str, what: str) -> Gauge:
            metric = Gauge(name, what, labels, registry=self.registry)
            return metric.labels(command, table)

        self.done = gauge("jobs_rows_done", "Rows the job's workers have finished.")
        self.expected = gauge("jobs_rows_expected", "Rows the job has to process.")
        self.rate = gauge("jobs_rows_per_second", "Rows finished per second since the start.")
        self.eta = gauge("jobs_eta_seconds", "Seconds left at the current rate.")
        self.finished = gauge("jobs_finished", "1 once the job has committed, else 0.")
        self.expected.set(total)
        self._server: Any = None
        if reporting.metrics_port >= 0:
            self._server = start_http_server(
                reporting.metrics_port, reporting.metrics_host, registry=self.registry
            )
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.reporting.every_s):
            self.report()

    def report(self, final: bool = False) -> str:
        """Read the count, set the gauges, print one line, push; returns the line."""
        done = min(int(ray.get(self.counter.get.remote())), self.total)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("nan")
        self.done.set(done)
        self.rate.set(rate)
        self.eta.set(0.0 if final else left)
        self.finished.set(1.0 if final else 0.0)
        share = done / self.total if self.total else 1.0
        eta = "done" if final else (f"ETA {left:,.0f}s" if rate > 0 else "ETA unknown")
        line = (
            f"{self.command} {self.table}: {done:,}/{self.total:,} rows ({share:.0%}), "
            f"{rate:,.1f} rows/s, {eta}"
        )
        print(line, file=self.reporting.out, flush=True)
        if self.reporting.pushgateway:
            push_to_gateway(
                self.reporting.pushgateway,
                job=f"embedsearch-{self.command}",
                registry=self.registry,
                grouping_key={"table": self.table},
            )
        return line

    def close(self, committed: bool) -> None:
        """Stop reporting; a committed job reports once more, as finished."""
        self._stop.set()
        self._thread.join()
        if committed:
            self.report(final=True)
        if self._server is not None:
            httpd, _ = self._server
            httpd.shutdown()
            httpd.server_close()
