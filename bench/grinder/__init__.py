"""Grinder's GPU measurement (issue 12): build with bench.build, run with run.py."""
