"""The control plane: the supervisor process that starts the stages, holds the readiness
handshake, restarts and watches them, adapts the input size, fans results out to subscribers,
and removes every process and segment at the end."""
