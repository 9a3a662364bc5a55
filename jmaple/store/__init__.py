"""The core's storage: SQLite through aiosqlite, plain values in and out."""
