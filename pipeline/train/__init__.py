"""Training a model on your own classes without torch: features of the shipped int8 MobileNetV2
in onnxruntime (features), a softmax head fitted in numpy (head), one .onnx file with the head as
its last layer (model_file), and a report on held-out images (report). `run.train` ties them
together for `pipeline-train`; the dataset is an ImageFolder split by capture time (dataset)."""
