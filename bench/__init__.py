"""Benchmarks: each compares embedsearch with a baseline measured in the same run."""
