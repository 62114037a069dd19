"""The caption plugin."""
