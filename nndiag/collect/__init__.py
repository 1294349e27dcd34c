"""Hooks and the recording engine (no Lightning imports here)."""
