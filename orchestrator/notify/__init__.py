"""Notifications: what happened (deploys, rollbacks, failed gates, healing, escalations, drift),
posted as JSON to the environment's webhooks (`notify:` in the environment file)."""
