"""rnnserve.train."""
