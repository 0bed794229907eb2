"""Monitoring: the alert rules and their tests, Prometheus and Alertmanager files rendered per
environment and deployed to the monitoring host, and their verification with promtool and amtool.
"""
