output "hosts" {
  description = "Hosts of the fleet in order (apps, monitoring, lb): name, address, private_address, groups."
  value = [
    for host in local.hosts : {
      name            = host.name
      address         = host.address
      private_address = host.address
      groups          = host.groups
    }
  ]

  # Known at plan time, reported only once every host exists.
  depends_on = [terraform_data.host]
}

output "ssh_user" {
  description = "User Ansible connects as (key: PROJECT/.orchestrate/ssh/id_ed25519); with sudo when it is not root."
  value       = var.ssh_user
}
