"""The delivery engine: claim -> throttle -> render -> send -> record (``worker.py``)."""
