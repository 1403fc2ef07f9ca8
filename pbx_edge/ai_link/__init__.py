"""ai_link."""
