"""keyagent: a key agent that keeps a Status identity in a token and speaks the Status secure transport."""

__version__ = "0.1.0"
