"""The labelling page ("teach"), served by the preview consumer under `/teach` when it is given a
dataset folder: label collected examples, upload pictures, review the running model's uncertain
results, train, deploy and roll back from the browser (docs/own-classes.md)."""
