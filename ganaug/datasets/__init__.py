"""Framework-free dataset readers (import the submodule you need)."""
