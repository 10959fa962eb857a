"""Test and benchmark helpers that run real servers (never mocks)."""
