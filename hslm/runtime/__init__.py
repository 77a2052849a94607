"""Runtimes that generate from exported models, one backend per module."""
