"""Database access: engine and sessions (``engine.py``), models, and the Alembic migrations."""
