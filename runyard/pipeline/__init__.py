"""Pipeline files: parse (with positions) → lint (every problem at once) → model."""
