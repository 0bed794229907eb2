"""Logs of the fleet's hosts: journal queries, merging by time, and where the journal is read from."""
