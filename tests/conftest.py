"""Shared fixtures. Integration tests start the real local stack once per session."""
