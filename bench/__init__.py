"""Benchmarks: ``python -m bench [--full] [name ...]`` (``make bench``)."""
