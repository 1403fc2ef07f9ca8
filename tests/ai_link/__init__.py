"""Tests of pbx_edge.ai_link."""
