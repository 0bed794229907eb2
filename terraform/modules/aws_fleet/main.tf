# A small fleet in one VPC: N application instances, one monitoring instance and optionally an
# HAProxy load balancer in public subnets. Ingress, by source (nothing else reaches any port):
# - the admin CIDR (operators and the orchestrate controller): SSH everywhere, the service port
#   (blue-green smoke load on the idle colour) and Prometheus' API (the traffic gates' queries);
# - the load balancer: the service port (client traffic, HAProxy health checks);
# - the monitoring host: the service port (/metrics scrapes) and the exporter ports;
# - every host of the fleet (group `fleet`): the monitoring host's journal receiver (central logs,
#   HTTPS with client certificates of the environment's CA);
# - the clients (lb_ingress_cidrs): HTTP on the load balancer only.
# Alertmanager and the node exporter of the monitoring host are used over loopback only.
# Egress, by destination: inside the VPC (backends, scrapes, the VPC's DNS) and HTTP/HTTPS out
# (package mirrors, artifact downloads, AWS APIs). None of them is AWS's default "everything to
# 0.0.0.0/0" rule, which the provider revokes right after it creates a group: a rule identical to
# it is refused as InvalidPermission.Duplicate whenever that revocation has not taken effect yet.
#
# SSH host keys: every instance's key is made by the controller and given to cloud-init in its
# user data (`ssh_keys`), so known_hosts is written before the first connection. The user data is
# only read when an instance is created (cloud-init runs those modules once per instance): later
# changes are ignored, and the public key each instance was created with is kept in the state by
# terraform_data.host_key (output `hosts[*].host_key`). The state itself holds no private key:
# the provider keeps only a hash of user_data (see docs/teams.md for where the keys do live).

locals {
  # Ports the monitoring host scrapes besides the service port's /metrics.
  node_exporter_port    = 9100
  haproxy_exporter_port = 8405
  # Prometheus on the monitoring host (roles/prometheus prometheus_listen_address).
  prometheus_port = 9090
  # The monitoring host's journal receiver (roles/journal_remote journal_remote_port).
  journal_remote_port = 19532
  tags                = merge(var.tags, { "orchestrate:fleet" = var.name })

  # Instance names, the keys of var.user_data and var.host_public_keys (orchestrate computes the
  # same list: orchestrator.fleet.render.aws_instance_names).
  app_names       = [for index in range(var.app_count) : "${var.name}-app-${index + 1}"]
  monitoring_name = "${var.name}-monitoring"
  lb_names        = [for index in range(var.lb_count) : "${var.name}-lb"]
  instance_names  = concat(local.app_names, [local.monitoring_name], local.lb_names)
  instance_id = merge(
    { for index, name in local.app_names : name => aws_instance.app[index].id },
    { (local.monitoring_name) = aws_instance.monitoring.id },
    { for index, name in local.lb_names : name => aws_instance.lb[index].id },
  )

  # Everything out that the hosts need, and nothing equal to AWS's default egress rule.
  egress = [
    { description = "Inside the VPC (backends, scrapes, the VPC DNS resolver)", protocol = "-1", from_port = 0, to_port = 0, cidr_blocks = [var.vpc_cidr] },
    { description = "HTTPS out (artifact downloads, package mirrors, AWS APIs)", protocol = "tcp", from_port = 443, to_port = 443, cidr_blocks = ["0.0.0.0/0"] },
    { description = "HTTP out (Debian package mirrors)", protocol = "tcp", from_port = 80, to_port = 80, cidr_blocks = ["0.0.0.0/0"] },
  ]
}

data "aws_availability_zones" "available" {
  state = "available"
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_subnet" "this" {
  count = length(var.subnet_cidrs)

  vpc_id                  = aws_vpc.this.id
  cidr_block              = var.subnet_cidrs[count.index]
  availability_zone       = data.aws_availability_zones.available.names[count.index % length(data.aws_availability_zones.available.names)]
  map_public_ip_on_launch = true

  tags = merge(local.tags, { Name = "${var.name}-public-${count.index + 1}" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_route_table" "this" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route_table_association" "this" {
  count = length(var.subnet_cidrs)

  subnet_id      = aws_subnet.this[count.index].id
  route_table_id = aws_route_table.this.id
}

# Rules are inline so that a rule added behind Terraform's back shows up as drift of the group.

# Every instance of the fleet carries this group, which has no rule of its own: the monitoring
# host admits journal uploads from its members. (The app and lb groups cannot be named there:
# they already name the monitoring group, and inline rules may not refer to each other in a cycle.)
resource "aws_security_group" "fleet" {
  name        = "${var.name}-fleet"
  description = "Every host of ${var.name}: may upload its journal to the monitoring host"
  vpc_id      = aws_vpc.this.id

  dynamic "egress" {
    for_each = local.egress

    content {
      description = egress.value.description
      from_port   = egress.value.from_port
      to_port     = egress.value.to_port
      protocol    = egress.value.protocol
      cidr_blocks = egress.value.cidr_blocks
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-fleet" })
}

resource "aws_security_group" "monitoring" {
  name        = "${var.name}-monitoring"
  description = "Monitoring host of ${var.name}: SSH and Prometheus from the admin CIDR"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "SSH from the admin CIDR"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.admin_cidr]
  }

  ingress {
    description = "Prometheus API from the admin CIDR (canary and blue-green gates of the controller)"
    from_port   = local.prometheus_port
    to_port     = local.prometheus_port
    protocol    = "tcp"
    cidr_blocks = [var.admin_cidr]
  }

  ingress {
    description     = "Journal uploads from every host of the fleet (client certificates checked on the host)"
    from_port       = local.journal_remote_port
    to_port         = local.journal_remote_port
    protocol        = "tcp"
    security_groups = [aws_security_group.fleet.id]
  }

  dynamic "egress" {
    for_each = local.egress

    content {
      description = egress.value.description
      from_port   = egress.value.from_port
      to_port     = egress.value.to_port
      protocol    = egress.value.protocol
      cidr_blocks = egress.value.cidr_blocks
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-monitoring" })
}

resource "aws_security_group" "app" {
  name        = "${var.name}-app"
  description = "Application hosts of ${var.name}: SSH from the admin CIDR, service from LB, monitoring and admin CIDR"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "SSH from the admin CIDR"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.admin_cidr]
  }

  ingress {
    description     = "Service port from the load balancer (traffic) and the monitoring host (/metrics)"
    from_port       = var.service_port
    to_port         = var.service_port
    protocol        = "tcp"
    security_groups = concat([aws_security_group.monitoring.id], aws_security_group.lb[*].id)
  }

  ingress {
    description = "Service port from the admin CIDR (smoke load of the controller on an idle colour)"
    from_port   = var.service_port
    to_port     = var.service_port
    protocol    = "tcp"
    cidr_blocks = [var.admin_cidr]
  }

  ingress {
    description     = "Node exporter from the monitoring host only"
    from_port       = local.node_exporter_port
    to_port         = local.node_exporter_port
    protocol        = "tcp"
    security_groups = [aws_security_group.monitoring.id]
  }

  dynamic "egress" {
    for_each = local.egress

    content {
      description = egress.value.description
      from_port   = egress.value.from_port
      to_port     = egress.value.to_port
      protocol    = egress.value.protocol
      cidr_blocks = egress.value.cidr_blocks
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-app" })
}

resource "aws_key_pair" "this" {
  key_name   = var.name
  public_key = var.ssh_public_key

  tags = local.tags
}

resource "aws_instance" "app" {
  count = var.app_count

  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.this[count.index % length(aws_subnet.this)].id
  vpc_security_group_ids = [aws_security_group.app.id, aws_security_group.fleet.id]
  key_name               = aws_key_pair.this.key_name

  # cloud-init: the login user and the SSH host key the controller made (read at first boot only)
  user_data = var.user_data[local.app_names[count.index]]

  metadata_options {
    http_tokens = "required"
  }

  lifecycle {
    # cloud-init applies user data once per instance: a change could never reach the host, and
    # another controller (which has its own keys) must not replace the fleet by planning
    ignore_changes = [user_data]
  }

  tags = merge(local.tags, { Name = "${var.name}-app-${count.index + 1}", "orchestrate:groups" = "app" })
}

resource "aws_instance" "monitoring" {
  ami                    = var.ami_id
  instance_type          = var.monitoring_instance_type
  subnet_id              = aws_subnet.this[0].id
  vpc_security_group_ids = [aws_security_group.monitoring.id, aws_security_group.fleet.id]
  key_name               = aws_key_pair.this.key_name

  # cloud-init: the login user and the SSH host key the controller made (read at first boot only)
  user_data = var.user_data[local.monitoring_name]

  metadata_options {
    http_tokens = "required"
  }

  lifecycle {
    # cloud-init applies user data once per instance: a change could never reach the host, and
    # another controller (which has its own keys) must not replace the fleet by planning
    ignore_changes = [user_data]
  }

  tags = merge(local.tags, { Name = "${var.name}-monitoring", "orchestrate:groups" = "monitoring" })
}

# The load balancer is an HAProxy instance rather than an ALB: metric-gated canary steps and the
# blue-green switch set per-server weights through HAProxy's admin socket (instant, no dropped
# request, same code path as the local fleet); ALB weighted target groups only split between
# whole groups and apply weight changes asynchronously.
resource "aws_security_group" "lb" {
  count = var.lb_count

  name        = "${var.name}-lb"
  description = "Load balancer of ${var.name}: HTTP from the clients, SSH from the admin CIDR, exporter from monitoring"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "HTTP from the clients"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = var.lb_ingress_cidrs
  }

  ingress {
    description = "SSH from the admin CIDR"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.admin_cidr]
  }

  ingress {
    description     = "HAProxy exporter from the monitoring host only"
    from_port       = local.haproxy_exporter_port
    to_port         = local.haproxy_exporter_port
    protocol        = "tcp"
    security_groups = [aws_security_group.monitoring.id]
  }

  ingress {
    description     = "Node exporter from the monitoring host only"
    from_port       = local.node_exporter_port
    to_port         = local.node_exporter_port
    protocol        = "tcp"
    security_groups = [aws_security_group.monitoring.id]
  }

  dynamic "egress" {
    for_each = local.egress

    content {
      description = egress.value.description
      from_port   = egress.value.from_port
      to_port     = egress.value.to_port
      protocol    = egress.value.protocol
      cidr_blocks = egress.value.cidr_blocks
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-lb" })
}

resource "aws_instance" "lb" {
  count = var.lb_count

  ami                    = var.ami_id
  instance_type          = var.lb_instance_type
  subnet_id              = aws_subnet.this[0].id
  vpc_security_group_ids = [aws_security_group.lb[0].id, aws_security_group.fleet.id]
  key_name               = aws_key_pair.this.key_name

  # cloud-init: the login user and the SSH host key the controller made (read at first boot only)
  user_data = var.user_data[local.lb_names[count.index]]

  metadata_options {
    http_tokens = "required"
  }

  lifecycle {
    # cloud-init applies user data once per instance: a change could never reach the host, and
    # another controller (which has its own keys) must not replace the fleet by planning
    ignore_changes = [user_data]
  }

  tags = merge(local.tags, { Name = "${var.name}-lb", "orchestrate:groups" = "lb" })
}

# The public host key each instance was created with: known_hosts is written from these (output
# hosts), whichever controller plans later. Replaced with its instance, never updated in place.
resource "terraform_data" "host_key" {
  for_each = toset(local.instance_names)

  input            = var.host_public_keys[each.key]
  triggers_replace = [local.instance_id[each.key]]

  lifecycle {
    ignore_changes = [input]
  }
}
