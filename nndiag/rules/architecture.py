"""Rules: architecture (filled in by the advisors work)."""
