"""The Content Credentials (C2PA) plugin."""
