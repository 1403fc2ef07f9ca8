"""Agents of the AI layer (IVR dialog, attendant, tools), as plain classes the Ray actors drive."""
