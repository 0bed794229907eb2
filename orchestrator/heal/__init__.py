"""Self-healing: the heal policy, the webhook server Alertmanager calls, and the remediations.
"""
