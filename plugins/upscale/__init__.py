"""The upscale plugin."""
