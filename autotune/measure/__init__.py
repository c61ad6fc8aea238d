"""Measurement: throughput/latency of generate() and peak memory, following DESIGN.md's protocol."""
