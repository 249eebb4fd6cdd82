"""Code every BOIG service shares: contracts, settings, errors and HTTP plumbing."""
