"""Examples of using a running pipeline from other programs."""
