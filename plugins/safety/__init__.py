"""The safety plugin."""
