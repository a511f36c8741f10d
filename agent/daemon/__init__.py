"""The daemon side of the agent: socket server, request service, SQLite store and session manager."""
