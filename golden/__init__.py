"""Canonical test vectors for the math of every script (see golden/README.md)."""
