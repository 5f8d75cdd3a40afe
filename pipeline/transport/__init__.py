"""The data plane: how frames and small messages move between processes. Shared-memory rings
for the pixels (ring), edges that pair a ring with a ZeroMQ socket and a back-pressure policy
(edge, tcp_edge), the work queue inference workers share (workqueue), reading on demand
(credits), the messages themselves (messages), and where a run's sockets and rings are named
and found (rundir). Knows nothing of the supervisor, the stages or the command line."""
