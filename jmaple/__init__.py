"""Jmaple: a JMAP server with push at its centre."""

__version__ = "0.1.0"
