"""The optional sections of tools/bench.py."""
