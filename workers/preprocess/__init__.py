"""Preprocess: frames ring -> model inputs in the tensors ring (stage), by the torchvision eval
transform (transform)."""
