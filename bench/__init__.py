"""Benchmark scripts (run them as files: ``.venv/bin/python bench/report.py``); shared helpers in ``bench.common``."""
