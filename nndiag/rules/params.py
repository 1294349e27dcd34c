"""Rules: params (filled in by the advisors work)."""
