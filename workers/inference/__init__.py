"""Inference: the workers' loop (stage), the classifier in any of the three runtimes (classifier,
torch_models), which runtime and file to load (model_plan, runtime_probe, onnx_export,
qdq_format, tflite_export), the error they all raise (errors), and the shipped model
(model_files)."""
