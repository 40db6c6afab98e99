"""Data stages: ingest readers, clean, split, balance, augment (polars, lazy where it pays)."""
