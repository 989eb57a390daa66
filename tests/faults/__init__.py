"""Fault injection against the real worker: malformed input, stalled peers."""
