"""The client side of a running pipeline: subscribing to its results from any process
(subscription) and the result consumers `pipeline-attach` runs (consumers)."""
