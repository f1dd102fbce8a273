"""Logging, liveness and metrics shared by the operator and the agent."""
