"""Report writing: prompts, writer backends by name, LLM output parsing and report QC."""
