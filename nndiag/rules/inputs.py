"""Rules: inputs (filled in by the advisors work)."""
