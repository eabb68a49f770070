"""Release: gated, checksummed, verifiable bundle."""
