"""Builders for tests, benchmarks and the demo: labelled image degradations and tiny random-weight
model checkouts. Nothing in a production run depends on them."""
