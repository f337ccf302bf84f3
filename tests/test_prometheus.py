"""Prometheus: promtool on the config and rules, the alerts' unit tests, and a real Prometheus
server scraping the three services while they serve traffic."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

import embedsearch
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector
from service_kit.cli import up_command
from service_kit.launch import free_port

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "embedsearch.json"
SERVICES = ("gateway", "embedder", "store")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
WAIT_S = 90.0


class Tools(NamedTuple):
    prometheus: str
    promtool: str


def install_debian_prometheus() -> None:
    """``apt-get install prometheus`` without starting the packaged service: with no
    policy-rc.d in place, one that refuses every start is there for the install."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("promtool and prometheus are missing: apt-get install prometheus (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    placed = not POLICY_RC.exists()
    if placed:
        POLICY_RC.write_text("#!/bin/sh\n# placed by tests/test_prometheus.py\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
            subprocess.run(install, env=env, capture_output=True, check=True)
    finally:
        if placed:
            POLICY_RC.unlink()


@pytest.fixture(scope="session")
def tools() -> Tools:
    """Debian's prometheus and promtool, installed on first use."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        install_debian_prometheus()
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus and promtool, "the prometheus package installed no prometheus/promtool"
    return Tools(prometheus, promtool)


def promtool(tools: Tools, *args: str) -> str:
    out = subprocess.run(
        [tools.promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_promtool_accepts_the_scrape_config_and_the_rules(tools):
    checked = promtool(tools, "check", "config", "prometheus.yml")
    assert "rules/alerts.yml" in checked and "rules/recording.yml" in checked  # both loaded
    promtool(tools, "check", "rules", "rules/recording.yml", "rules/alerts.yml")


def test_every_alert_fires_in_its_unit_test(tools):
    promtool(tools, "test", "rules", *sorted(str(p) for p in PROMETHEUS.glob("tests/*.yml")))
    tested = set(
        re.findall(r"alertname: (\w+)", (PROMETHEUS / "tests/alerts_test.yml").read_text())
    )
    alerts = {r["alert"] for g in rule_groups("alerts.yml") for r in g["rules"]}
    assert alerts == tested


def test_promtool_unit_tests_can_fail(tools, tmp_path):
    """The unit tests are not vacuous: an alert with a raised threshold no longer passes them."""
    (tmp_path / "rules").mkdir()
    shutil.copytree(PROMETHEUS / "tests", tmp_path / "tests")
    shutil.copy(PROMETHEUS / "rules/recording.yml", tmp_path / "rules")
    alerts = (PROMETHEUS / "rules/alerts.yml").read_text()
    loosened = alerts.replace("job:embedsearch_request_errors:ratio_rate5m > 0.05", "… > 0.5")
    assert loosened != alerts
    (tmp_path / "rules/alerts.yml").write_text(
        loosened.replace("…", "job:embedsearch_request_errors:ratio_rate5m")
    )
    out = subprocess.run(
        [tools.promtool, "test", "rules", "tests/alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "EmbedsearchHighErrorRatio" in out.stdout + out.stderr


def test_operator_rule_is_the_rule_files(tmp_path):
    """prometheus-rule.yaml is generated (make prometheus-rule): it must match its sources."""
    generator = PROMETHEUS / "operator" / "make_rule.py"
    subprocess.run(
        [sys.executable, str(generator), str(tmp_path / "rule.yaml")], check=True, timeout=60
    )
    committed = (PROMETHEUS / "operator" / "prometheus-rule.yaml").read_text()
    assert (tmp_path / "rule.yaml").read_text() == committed, "run `make prometheus-rule`"


def rule_groups(name: str) -> list[dict[str, Any]]:
    return yaml.safe_load((PROMETHEUS / "rules" / name).read_text())["groups"]


# -- a real Prometheus against the running services ----------------------------------------------


@contextmanager
def running_stack(data_dir: Path) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
    """``embedsearch up`` on free ports with metrics on; yields gRPC and metrics ports.

    The store measures its tables on each maintenance pass (every 5 minutes by default): here
    every second, through the environment variable of its flag, so a new table shows at once.
    """
    ports = {name: free_port() for name in SERVICES}
    metrics = {name: free_port() for name in SERVICES}
    proc = subprocess.Popen(
        up_command(str(data_dir), "127.0.0.1", ports, metrics),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STORE_MAINTENANCE_INTERVAL_S": "1"},
    )
    try:
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "embedsearch is up" in line:
                break
        assert "embedsearch is up" in "".join(seen), "".join(seen[-30:])
        yield ports, metrics
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def scrape_config_for(metrics: dict[str, int], work: Path) -> Path:
    """The committed prometheus.yml with each job's DNS discovery replaced by the loopback
    address of that service, the committed rules, and one-second intervals."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name, job in jobs.items():
        assert job.pop("dns_sd_configs"), f"job {name} discovers nothing"
        job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics[name]}"]}]
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS / path) for path in config["rule_files"]]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def prometheus_server(tools: Tools, config: Path, work: Path) -> Iterator[str]:
    port = free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            tools.prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return body["data"]


def by_job(base: str, query: str) -> dict[str, float]:
    """An instant query's values, by job."""
    return {
        r["metric"].get("job", ""): float(r["value"][1])
        for r in api(base, "query", query=query)["result"]
    }


def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            result = check()
        except (OSError, AssertionError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never showed {what}")
        time.sleep(0.5)


def drive_traffic(gateway_port: int) -> None:
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(384) = func.VectorField()

    db = embedsearch.connect(f"grpc://127.0.0.1:{gateway_port}")
    table = db.create_table("scraped", schema=Doc)
    table.add([{"text": f"document number {i}"} for i in range(20)])
    for query in ("number one", "number two", "number three"):
        assert len(table.search(query).limit(3).to_list()) == 3
    with pytest.raises(embedsearch.TableNotFound):
        db.open_table("no_such_table")


def exported_names(metrics_port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))


SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


def each_service(metric: str) -> str:
    """A selector for ``<service>_<metric>`` of all three services."""
    return f'{{__name__=~"(gateway|embedder|store)_{metric}"}}'


def referenced_series(text: str) -> set[str]:
    """Metric names of the services that PromQL in ``text`` reads (not recorded series)."""
    return set(re.findall(r"(?<![:\w])((?:gateway|embedder|store)_[a-z_]+)(?![:\w])", text))


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_three_services(tools, tmp_path):
    with running_stack(tmp_path / "data") as (ports, metrics):
        config = scrape_config_for(metrics, tmp_path)
        with prometheus_server(tools, config, tmp_path) as prom:
            up = eventually(
                lambda: (
                    (v := by_job(prom, 'up{job=~"gateway|embedder|store"}')) and len(v) == 3 and v
                ),
                "up for the three jobs",
            )
            assert up == {name: 1.0 for name in SERVICES}
            requests = f"sum by (job) ({each_service('requests_total')})"
            latency = f"sum by (job) ({each_service('request_duration_seconds_count')})"
            before = {q: by_job(prom, q) for q in (requests, latency)}

            drive_traffic(ports["gateway"])

            def moved() -> bool:
                now = {q: by_job(prom, q) for q in (requests, latency)}
                return all(
                    now[q].get(job, 0) > before[q].get(job, 0) for q in now for job in SERVICES
                )

            eventually(moved, "request counters and latency histograms moving on all three")
            buckets = by_job(
                prom, f"count by (job) ({each_service('request_duration_seconds_bucket')} > 0)"
            )
            assert set(buckets) == set(SERVICES)
            # A scrape in the middle of the traffic moves the counters before the last calls
            # land: wait for the scrape that holds them.
            for query, job, what in (
                (
                    'sum by (job) (gateway_requests_total{code="NOT_FOUND"})',
                    "gateway",
                    "the missing table's NOT_FOUND, by status code",
                ),
                ("sum by (job) (embedder_batch_size_count)", "embedder", "the embedder's batches"),
            ):
                eventually(lambda q=query, j=job: by_job(prom, q).get(j, 0) >= 1, what)

            # The recording rules evaluate against the real series, without errors.
            eventually(
                lambda: (
                    set(by_job(prom, "job_method_code:embedsearch_requests:rate5m"))
                    == set(SERVICES)
                ),
                "the recorded request rates of the three services",
            )
            groups = api(prom, "rules")["groups"]
            assert {g["name"] for g in groups} == {"embedsearch.recording", "embedsearch.alerts"}
            broken = [r["name"] for g in groups for r in g["rules"] if r["health"] == "err"]
            assert not broken, broken

            # Every dashboard query is valid PromQL here, and the core panels have data.
            dashboard = json.loads(DASHBOARD.read_text())
            exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
            results = {expr: api(prom, "query", query=expr)["result"] for expr in exprs}
            for expr in (
                "sum by (job) (job_method_code:embedsearch_requests:rate5m)",
                "job:embedsearch_request_duration_seconds:p99_5m",
                "sum by (provider) (embedder_queue_depth)",
            ):
                assert results[expr], f"dashboard panel {expr!r} shows nothing"
            rows = 'max by (job) (store_table_rows{table="scraped"})'
            eventually(lambda: by_job(prom, rows).get("store") == 20, "the store's table rows")

        # Every service metric the rules and the dashboard read is one the services export.
        exported = set().union(*(exported_names(metrics[name]) for name in SERVICES))
        sources = [
            DASHBOARD.read_text(),
            *(p.read_text() for p in PROMETHEUS.glob("rules/*.yml")),
        ]
        for name in set().union(*(referenced_series(text) for text in sources)):
            assert any(name.removesuffix(s) in exported for s in SUFFIXES if name.endswith(s)), (
                f"{name} is read by a rule or the dashboard but no service exports it"
            )
