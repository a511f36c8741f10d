"""The pure protocol core: no sockets, no disk, no clock reads, no randomness except what callers inject.

Identity and signed-prekey operations reach the core only through :class:`agent.core.keyops.KeyOps`.
"""
