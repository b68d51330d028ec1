"""Sage 200 REST API simulator (see docs/sandbox-sage200.md)."""
