"""The synth run: rounds over one Ray Data pipeline, global QC, the run directory, finalize and the data card."""
