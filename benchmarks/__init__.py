"""Benchmarks: how gridmarkets scales, against raw highspy and linopy.

``python -m benchmarks [--full]`` runs every ``bench_*.py`` module's ``run(quick)`` and
writes benchmarks/RESULTS.md with the machine it ran on.
"""
