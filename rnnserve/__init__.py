"""rnnserve: batched, stateful serving of recurrent sentiment models."""

__version__ = "0.1.0"
