"""keyagent: a key agent that keeps a Status identity in a token and speaks the Status secure transport."""

from importlib.metadata import version as _version

#: From the installed package's metadata, so pyproject.toml is the one place the version is written.
__version__ = _version("keyagent")
