"""The gateway: BOIG's only public service (API keys, validation, rate limits, fan-out)."""
