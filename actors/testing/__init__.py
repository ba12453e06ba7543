"""Builders for tests and benchmarks: tiny random-weight model checkouts. Nothing in a production
run depends on them (tests/test_architecture.py holds that)."""
