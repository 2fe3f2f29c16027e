"""spanpref: span-level human feedback -> improvement chains -> preference-tuned models."""

__version__ = "0.1.0"
