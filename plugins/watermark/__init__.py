"""The watermark plugin."""
