"""Dataset metadata: class names and palettes."""
