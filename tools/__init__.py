"""Benchmarks (`tools/bench/`), examples (`tools/examples/`) and user tools, run from the project
root as modules, e.g. `python -m tools.bench.pipeline --duration 10`: every import is then
`from tools... import` and `from pipeline... import`, with no path set by hand."""
