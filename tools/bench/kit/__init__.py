"""Pieces the benchmarks share: the baselines the pipeline is measured against, the pipeline
runs, the emulated live camera, and the markdown tables the documentation quotes."""
