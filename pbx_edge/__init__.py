"""pbx_edge."""
