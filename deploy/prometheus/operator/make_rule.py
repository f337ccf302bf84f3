"""Write prometheus-rule.yaml: the rules in ../rules/ as a prometheus-operator PrometheusRule.

The rule files stay the one source: `make prometheus-rule` regenerates this, and
tests/test_prometheus.py fails when the committed file differs from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULE_FILES = ("recording.yml", "alerts.yml")
HEADER = "# Generated from deploy/prometheus/rules/ by `make prometheus-rule`; do not edit.\n"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL, descriptions) as literal blocks, as they read."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def prometheus_rule() -> str:
    """The PrometheusRule manifest, as YAML text."""
    groups = []
    for name in RULE_FILES:
        groups += yaml.safe_load((HERE.parent / "rules" / name).read_text())["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "embedsearch", "labels": {"app.kubernetes.io/part-of": "embedsearch"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "prometheus-rule.yaml"
    target.write_text(prometheus_rule())
