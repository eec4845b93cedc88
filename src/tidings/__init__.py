"""Tidings: self-hosted email delivery through a persistent, throttled, retrying queue."""

__version__ = "0.1.0"
