"""Fuzz targets of the parsers of untrusted bytes (see targets.py)."""
