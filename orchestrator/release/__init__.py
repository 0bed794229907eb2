"""Releases: the artifact (build, id, staging), the host-level deploy and rollback through the
rust_service role, traffic releases (blue-green, canary by weight), backups, per-host
transitions, and the release service every entry point calls.
"""
