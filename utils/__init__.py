"""Small shared helpers: errors, atomic file writes, device and seed handling."""
