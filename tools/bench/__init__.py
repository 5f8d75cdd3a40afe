"""The benchmarks: each module is a command (`python -m tools.bench.NAME --help`); their shared
pieces are in `tools.bench.kit`."""
