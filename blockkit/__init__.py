"""blockkit."""
