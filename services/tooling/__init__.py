"""Developer tooling that spans services: contracts export, model preparation, local stack."""
