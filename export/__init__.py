"""rnnserve.export."""
