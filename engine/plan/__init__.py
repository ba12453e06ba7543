"""Balanced entity sampling: the plan every later stage consumes."""
