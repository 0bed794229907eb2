"""The embedded local fleet: systemd-nspawn hosts on a bridge the project owns, split by concern:
image, network, registry, processes, keys, the fleet itself and the Terraform entry points.
"""
