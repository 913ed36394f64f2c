"""Evaluation helpers (import the submodule you need)."""
