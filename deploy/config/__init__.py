"""Typed deployment configs: the YAML schema and its loader (``_base_`` files, ``-o`` overrides)."""
