"""Protobuf code generated from ``proto/`` (committed; regenerate with ``python -m agent.pb.regen``).

``agent.pb.status.protocol_message_pb2`` holds the secure-transport wire messages.
"""
