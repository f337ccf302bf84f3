"""A few seconds of the load benchmark's client mix against the stack: no error but backpressure."""

from __future__ import annotations

from bench.load import Workload, load_gateway, prepare_gateway_table


def test_short_load_run_fails_nothing_but_by_backpressure(stack):
    texts = [f"load test sentence {i} about topic {i % 13}" for i in range(400)]
    prepare_gateway_table(stack.gateway, texts[:100], table="load_short")
    tally = load_gateway(stack.gateway, Workload(texts[100:]), 4.0, 8, table="load_short")
    assert tally.unexpected_errors() == {}, tally.codes
    assert tally.codes["OK"] > 0
    assert tally.latencies_s and len(tally.latencies_s) == tally.calls
