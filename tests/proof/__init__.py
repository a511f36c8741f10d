"""Proof under fire: crash safety, fuzzing, load and hostile clients against real agents (issue 8)."""
