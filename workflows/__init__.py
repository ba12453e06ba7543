"""Runs that span the steps: the demo (`make demo`) and the experiment (`syncxr experiment`), each
synthesizing, training and evaluating in turn. This is the one place above engine, train and eval:
it calls the same public functions their subcommands call, and nothing below imports it."""
