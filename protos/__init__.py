"""rnnserve.protos."""
