"""Benchmarks, sweeps and the demo, each run as `python scripts/<name>.py`; a package so they
share scripts.pipeline through the installed project."""
