"""Rules: gradients (filled in by the advisors work)."""
