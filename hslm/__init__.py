"""hslm: Hindi small language models (Gemma 3 architecture)."""

__version__ = "0.1.0"
