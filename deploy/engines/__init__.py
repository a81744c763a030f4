"""Engines: how a model runs. The plan (what runs where) and one module per engine."""
