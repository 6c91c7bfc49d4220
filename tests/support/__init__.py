"""Builders the tests share (tiny models, tokenizers, artifacts); fixtures live in
tests/conftest.py."""
