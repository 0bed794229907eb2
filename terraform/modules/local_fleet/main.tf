# One terraform_data per host. The host itself (overlay, nspawn container, bridge) is made and
# removed by `python -m orchestrator.fleet.local`, called without a shell from the provisioners.
# A host whose process died is not a change terraform can see: `orchestrate provision`
# restores such hosts after apply (orchestrator.fleet.local.terraform.ensure_fleet_from_outputs).

locals {
  roles = concat(
    [for i in range(var.app_count) : { name = "${var.host_prefix}-app-${i + 1}", group = "app" }],
    [for i in range(var.monitoring_count) : { name = "${var.host_prefix}-mon-${i + 1}", group = "monitoring" }],
    [for i in range(var.lb_count) : { name = "${var.host_prefix}-lb-${i + 1}", group = "lb" }],
  )

  # Same order and addresses as orchestrator.fleet.local.fleet.plan_hosts: .10 upward.
  hosts = [
    for index, role in local.roles : {
      name        = role.name
      address     = cidrhost(var.subnet, 10 + index)
      groups      = [role.group]
      bridge      = var.bridge
      subnet      = var.subnet
      state_dir   = var.state_dir
      project_dir = var.project_dir
      python      = var.python
      ssh_user    = var.ssh_user
    }
  ]
}

resource "terraform_data" "host" {
  for_each = { for host in local.hosts : host.name => host }

  # A host never moves: a new address, bridge, directory or login user means a new host.
  triggers_replace = {
    address   = each.value.address
    bridge    = each.value.bridge
    subnet    = each.value.subnet
    state_dir = each.value.state_dir
    ssh_user  = each.value.ssh_user
  }

  # Destroy-time provisioners may only read self, so everything they need is in input.
  input = each.value

  provisioner "local-exec" {
    interpreter = [self.input.python, "-m", "orchestrator.fleet.local", "create"]
    command     = jsonencode(self.input)
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = [self.input.python, "-m", "orchestrator.fleet.local", "destroy"]
    command     = jsonencode(self.input)
  }
}
