"""The fleet: Terraform roots rendered per environment, provisioning, the inventory from Terraform's
outputs, the address guard, AWS helpers, and the embedded local fleet (`fleet.local`).
"""
