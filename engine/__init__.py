"""syncxr engine: configuration, corpora, entities, planning, stages, QC and the CLI."""
__version__ = "0.1.0"
