output "hosts" {
  description = "Hosts of the fleet, the same shape as local_fleet: name, address (public IP, else private), private_address, groups."
  value = concat(
    [for index, instance in aws_instance.app : {
      name            = "${var.name}-app-${index + 1}"
      address         = coalesce(instance.public_ip, instance.private_ip)
      private_address = instance.private_ip
      groups          = ["app"]
    }],
    [{
      name            = "${var.name}-monitoring"
      address         = coalesce(aws_instance.monitoring.public_ip, aws_instance.monitoring.private_ip)
      private_address = aws_instance.monitoring.private_ip
      groups          = ["monitoring"]
    }],
    [for instance in aws_instance.lb : {
      name            = "${var.name}-lb"
      address         = coalesce(instance.public_ip, instance.private_ip)
      private_address = instance.private_ip
      groups          = ["lb"]
    }],
  )
}

output "ssh_user" {
  description = "User Ansible connects as: 'admin' on Debian AMIs."
  value       = "admin"
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
