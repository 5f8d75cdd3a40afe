"""Observation: counters and latency distributions (stats), the run's status and summary
(report, and their text formatting), the Prometheus endpoint (metrics) and traces (trace)."""
