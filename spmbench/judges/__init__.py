"""Judges: say whether a concept is present in generated images."""
