"""The broker: CURVE allow-list (ZAP), identity stamping, mesh ACL, limits, registry, routing."""
