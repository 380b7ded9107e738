"""Turning cortex.yaml into running versions: reload plans, models, snapshots, environments."""
