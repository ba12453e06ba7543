"""Checks a Ray cluster definition against the engine's configs before anything is launched:
the cluster YAML passes Ray's own schema (offline), its start commands keep the dashboard local
and token authentication on, and every stage's resource request fits some node type."""
