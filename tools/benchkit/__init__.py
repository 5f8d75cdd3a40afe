"""Pieces of `tools/bench.py`: the baselines it measures our pipeline against, the pipeline runs,
and the live-camera emulation every run shares so that all of them see the same frames."""
