variable "name" {
  description = "Name prefix and Name tag of every resource (lowercase letters, digits and '-', 2-32 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,31}$", var.name))
    error_message = "The name must be 2-32 characters of lowercase letters, digits and '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the fleet, such as eu-west-1."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "The region must be an AWS region name such as eu-west-1, us-east-2 or us-gov-west-1."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC, /16 to /28."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 28
    error_message = "The vpc_cidr must be an IPv4 CIDR with a prefix length between /16 and /28, such as 10.40.0.0/16."
  }
}

variable "subnet_cidrs" {
  description = "IPv4 CIDRs of the public subnets inside vpc_cidr, one per availability zone (instances are spread across them)."
  type        = list(string)
  default     = ["10.40.1.0/24"]

  validation {
    condition     = length(var.subnet_cidrs) >= 1 && alltrue([for cidr in var.subnet_cidrs : can(cidrnetmask(cidr))])
    error_message = "The subnet_cidrs must be a non-empty list of IPv4 CIDRs such as [\"10.40.1.0/24\"]."
  }
}

variable "admin_cidr" {
  description = "IPv4 CIDR of the operators and the orchestrate controller, such as 203.0.113.0/24: reaches SSH (22) on every host, the service port of the app hosts and Prometheus (9090)."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.admin_cidr))
    error_message = "The admin_cidr must be an IPv4 CIDR such as 203.0.113.0/24 (0.0.0.0/0 opens SSH and Prometheus to everyone)."
  }
}

variable "app_count" {
  description = "Number of application instances (1 to 200)."
  type        = number
  default     = 3

  validation {
    condition     = var.app_count >= 1 && var.app_count <= 200 && floor(var.app_count) == var.app_count
    error_message = "The app_count must be a whole number from 1 to 200."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the application instances, such as t3.micro."
  type        = string
  default     = "t3.micro"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "The instance_type must be an EC2 instance type such as t3.micro, t3.small or m6i.large."
  }
}

variable "monitoring_instance_type" {
  description = "EC2 instance type of the monitoring instance (Prometheus, Alertmanager), such as t3.small."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.monitoring_instance_type))
    error_message = "The monitoring_instance_type must be an EC2 instance type such as t3.small or m6i.large."
  }
}

variable "ami_id" {
  description = "AMI of a systemd Linux with python3, cloud-init and sudo (Debian 12)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "The ami_id must be an AMI id such as ami-0123456789abcdef0."
  }
}

variable "service_port" {
  description = "TCP port the service listens on (and serves /metrics on), reachable from the load balancer, the monitoring host and the admin CIDR."
  type        = number
  default     = 8080

  validation {
    condition     = var.service_port >= 1 && var.service_port <= 65535 && var.service_port != 22 && var.service_port != 9100
    error_message = "The service_port must be a TCP port from 1 to 65535 other than 22 (SSH) and 9100 (node exporter)."
  }
}

variable "tags" {
  description = "Extra tags of every resource (keys up to 128 characters, values up to 256)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) >= 1 && length(k) <= 128 && length(v) <= 256 && !startswith(k, "aws:")])
    error_message = "Each tag key must be 1-128 characters and must not start with 'aws:'; each value at most 256 characters."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key installed for the ssh user of every instance (the project key, .orchestrate/ssh/id_ed25519.pub)."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+", var.ssh_public_key))
    error_message = "The ssh_public_key must be an OpenSSH public key of type ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521."
  }
}

variable "lb_count" {
  description = "Number of load-balancer instances running HAProxy in front of the app instances (0 or 1)."
  type        = number
  default     = 0

  validation {
    condition     = contains([0, 1], var.lb_count)
    error_message = "The lb_count must be 0 or 1."
  }
}

variable "lb_instance_type" {
  description = "EC2 instance type of the load-balancer instance, such as t3.small."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.lb_instance_type))
    error_message = "The lb_instance_type must be an EC2 instance type such as t3.small or m6i.large."
  }
}

variable "lb_ingress_cidrs" {
  description = "CIDRs allowed to reach the load balancer's HTTP port 80 (clients)."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.lb_ingress_cidrs) >= 1 && alltrue([for c in var.lb_ingress_cidrs : can(cidrhost(c, 0))])
    error_message = "The lb_ingress_cidrs must be a non-empty list of IPv4 CIDRs such as 0.0.0.0/0 or 203.0.113.0/24."
  }
}

variable "ssh_user" {
  description = "Login user of the instances, with passwordless sudo: the AMI's default user ('admin' on Debian, 'ubuntu', 'ec2-user'), or another that the user data creates."
  type        = string
  default     = "admin"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ssh_user)) && var.ssh_user != "root"
    error_message = "ssh_user must be a login name other than root, of lowercase letters, digits, '_' and '-' (e.g. admin, ubuntu, ec2-user)."
  }
}

variable "user_data" {
  description = "Cloud-init user data (#cloud-config) of every instance by name (NAME-app-1..N, NAME-monitoring, NAME-lb): the login user and the SSH host key orchestrate generated for it. Read when an instance is created."
  type        = map(string)
  sensitive   = true

  validation {
    condition     = alltrue([for text in values(var.user_data) : startswith(text, "#cloud-config\n")])
    error_message = "Every user_data value must be a #cloud-config document."
  }
}

variable "host_public_keys" {
  description = "The public SSH host key in each instance's user data, by instance name (\"ssh-ed25519 AAAA... comment\")."
  type        = map(string)

  validation {
    condition     = alltrue([for key in values(var.host_public_keys) : can(regex("^ssh-ed25519 [A-Za-z0-9+/=]+", key))])
    error_message = "Every host_public_keys value must be an ssh-ed25519 public key."
  }
}
