"""Capture: reads a source (sources, on the interface of source_base) at its pace (pacing) into
the frames ring (stage)."""
