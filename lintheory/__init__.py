"""lintheory: in-context learning as implicit gradient descent, and what SVD pruning does to it."""

__version__ = "0.1.0"
