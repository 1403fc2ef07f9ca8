"""ai_serve."""
