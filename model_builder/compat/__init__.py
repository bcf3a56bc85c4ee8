"""Compatibility with the serving image's runtime (TF 2.11 + scann 1.2.9 in google/tf-serving-scann:2.11.0)."""
