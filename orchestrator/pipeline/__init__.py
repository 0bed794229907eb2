"""`orchestrate up` and its schedule: every stage of a rollout through the run journal.
"""
