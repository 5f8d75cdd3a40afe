"""Stage workers: one module per stage kind (capture, preprocess, inference), each with `run(ctx)`."""
