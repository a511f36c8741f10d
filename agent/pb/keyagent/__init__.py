"""Generated protobuf modules (see agent/pb/regen.py); do not edit."""
