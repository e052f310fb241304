"""The service's routes, one router per concern (health, predict, webhooks)."""
