"""Inference backends behind one protocol (load, run, close; context manager)."""
