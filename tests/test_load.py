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


def test_store_handles_share_one_bounded_lance_session(tmp_path):
    """Every handle the store writes or reads through, whatever made it, uses the catalog's one
    session, whose metadata cache is capped: Lance caches each version's manifest, and a handle
    on a session of its own would grow its own cache again (to Lance's 1 GiB default)."""
    import pyarrow as pa

    from store_service.catalog import TableCatalog

    catalog = TableCatalog(str(tmp_path))
    rows = pa.table({"id": pa.array([1, 2], pa.int64())})
    catalog.create_table("t", rows.schema, rows=rows)
    assert catalog.dataset("t").session().is_same_as(catalog.session)
    catalog.add("t", rows)
    staged = catalog.begin_append("t")  # AddStream: fragments committed as one version
    staged.add(rows)
    staged.commit()
    assert catalog.dataset("t").session().is_same_as(catalog.session)
    catalog.restore("t", version=1)
    catalog.merge_insert("t", ["id"], rows, when_matched_update_all=True)
    for dataset in (catalog.dataset("t"), catalog.dataset("t", version=2)):
        assert dataset.session().is_same_as(catalog.session)
