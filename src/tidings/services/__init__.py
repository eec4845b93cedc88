"""The use cases, one module per domain. Services take a session, never commit, and raise ``errors.*``."""
