"""The stage processes: the harness every stage runs in (stage), and one package per stage kind:
capture (and its sources), preprocess (and its transform), inference (and its model runtimes)."""
