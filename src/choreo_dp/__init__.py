"""choreo-dp: a private data plane for an internal developer platform."""

__version__ = "0.1.0"
