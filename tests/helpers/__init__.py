"""Shared test helpers (real SoftHSM2 tokens, ...)."""
