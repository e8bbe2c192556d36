"""Entry points: every console script and ``python -m`` target of the package.

Each module here parses its command line and calls library functions; no library module parses
arguments. ``setup.py`` installs the console scripts (``train``, ``export``, ``evaluate``,
``anomaly_node``, ...) from these modules, and :mod:`.bench` holds the benchmark runners.
"""
