"""Capture: reads a source (sources) at its pace (pacing) into the frames ring (stage)."""
