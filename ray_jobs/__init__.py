"""Bulk work on Ray: ingest and embed a corpus, re-embed a table, build its indexes."""
