"""Executors start runners for messages and report how they ended."""
