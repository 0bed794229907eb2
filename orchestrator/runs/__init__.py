"""Coordination of runs: the environment lock, the crash-safe run journal, the audit log, and
`locked_run`, which every command that changes an environment goes through.
"""
