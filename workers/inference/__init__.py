"""Inference: the workers' loop (stage), the classifier in either runtime (classifier,
torch_models), which runtime and file to load (model_plan, runtime_probe, onnx_export), the error
they all raise (errors), and the shipped model (model_files)."""
