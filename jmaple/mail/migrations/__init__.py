"""Migrations of the Mail capability (numbered SQL files, applied in order)."""
