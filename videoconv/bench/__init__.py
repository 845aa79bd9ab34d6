"""Benchmarks: timing primitives, environment capture, workloads."""
