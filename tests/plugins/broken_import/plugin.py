"""Raises while being imported."""

raise RuntimeError("this plugin cannot start")
