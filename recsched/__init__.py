"""recsched: serving and two-level scheduling of neural recommendation models."""

__version__ = "0.1.0"
