"""Bundled search spaces (installed as autotune.search_spaces)."""
