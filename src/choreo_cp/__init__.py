"""The reference control plane: REST API, SQLite store and the tunnel endpoint agents dial."""
