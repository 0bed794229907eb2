"""`orchestrate verify` and pre-flight: registered static checks run before anything touches a host.
"""
