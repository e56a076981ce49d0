"""raydbb benchmarks: every result is a ratio measured side by side in one run.

One command each (``python -m benchmarks.<name>``), ``python -m benchmarks.run_quick`` (``make
bench``) runs the quick set and regenerates ``benchmarks/RESULTS.md``.
"""
