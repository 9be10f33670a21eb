"""Benchmarks (``mode-policy bench``): inference latency, training throughput, data loading, and the
timing and controls they share. Every figure is a ratio measured side by side in one process."""
