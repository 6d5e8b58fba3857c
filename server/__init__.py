"""rnnserve.server."""
