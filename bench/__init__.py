"""rnnserve.bench."""
