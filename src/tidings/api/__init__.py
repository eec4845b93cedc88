"""The HTTP API (FastAPI): thin handlers over ``tidings.services``."""
