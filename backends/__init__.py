"""Key backends: implementations of :class:`agent.core.keyops.KeyOps` (PKCS#11 token, software key file)."""

from agent.core.keyops import KeyOps as KeyOps

__all__ = ["KeyOps"]
