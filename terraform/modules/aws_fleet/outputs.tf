output "hosts" {
  description = "Hosts of the fleet, the same shape as local_fleet: name, address (public IP, else private), private_address, groups; and host_key, the SSH host key (public) the instance was created with."
  value = concat(
    [for index, instance in aws_instance.app : {
      name            = local.app_names[index]
      address         = coalesce(instance.public_ip, instance.private_ip)
      private_address = instance.private_ip
      groups          = ["app"]
      host_key        = terraform_data.host_key[local.app_names[index]].output
    }],
    [{
      name            = local.monitoring_name
      address         = coalesce(aws_instance.monitoring.public_ip, aws_instance.monitoring.private_ip)
      private_address = aws_instance.monitoring.private_ip
      groups          = ["monitoring"]
      host_key        = terraform_data.host_key[local.monitoring_name].output
    }],
    [for index, instance in aws_instance.lb : {
      name            = local.lb_names[index]
      address         = coalesce(instance.public_ip, instance.private_ip)
      private_address = instance.private_ip
      groups          = ["lb"]
      host_key        = terraform_data.host_key[local.lb_names[index]].output
    }],
  )
}

output "ssh_user" {
  description = "User Ansible connects as (var.ssh_user: 'admin' on Debian AMIs), with sudo."
  value       = var.ssh_user
}

output "vpc_id" {
  description = "ID of the fleet's VPC."
  value       = aws_vpc.this.id
}

output "security_group_ids" {
  description = "IDs of the security groups: app, monitoring, fleet (every instance) and (with lb_count = 1) lb."
  value = merge(
    { app = aws_security_group.app.id, monitoring = aws_security_group.monitoring.id, fleet = aws_security_group.fleet.id },
    { for group in aws_security_group.lb : "lb" => group.id },
  )
}
