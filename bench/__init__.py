"""Benchmarks: throughput measured as ratios against a baseline run in the same session."""
