"""The client side of a running pipeline: subscribing to its results from any process
(subscription), the results it delivers (result), and the result consumers `pipeline-attach` runs
(consumers)."""
