variable "host_prefix" {
  description = "Prefix of every host name (hosts are PREFIX-app-N, PREFIX-mon-1, PREFIX-lb-1); unique per machine."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.host_prefix))
    error_message = "host_prefix must be 1-20 of lowercase letters, digits and '-', starting with a letter (e.g. dev, ci-1a2b)."
  }
}

variable "app_count" {
  description = "Number of application hosts (group app)."
  type        = number
  default     = 3

  validation {
    condition     = var.app_count == floor(var.app_count) && var.app_count >= 1 && var.app_count <= 200
    error_message = "app_count must be a whole number from 1 to 200."
  }
}

variable "monitoring_count" {
  description = "Number of monitoring hosts (group monitoring): 0 or 1."
  type        = number
  default     = 1

  validation {
    condition     = contains([0, 1], var.monitoring_count)
    error_message = "monitoring_count must be one of 0, 1."
  }
}

variable "lb_count" {
  description = "Number of load-balancer hosts (group lb): 0 or 1."
  type        = number
  default     = 0

  validation {
    condition     = contains([0, 1], var.lb_count)
    error_message = "lb_count must be one of 0, 1."
  }
}

variable "bridge" {
  description = "Name of the Linux bridge the project owns; created with the subnet's first address, deleted with the last host. orchestrate always passes it: the env file's value, else orch-HOST_PREFIX (orchestrator.fleet.local.network.default_bridge_name)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,14}$", var.bridge))
    error_message = "bridge must be 1-15 of lowercase letters, digits and '-', starting with a letter (e.g. orch-dev)."
  }
}

variable "subnet" {
  description = "Private IPv4 subnet of the bridge, /16 to /28; hosts get .10 upward. orchestrate always passes it: the env file's value, else a /24 of 10.213.0.0/16 that no route of the machine uses, chosen once and kept in .orchestrate/ENV/network.json (orchestrator.fleet.local.network.resolve_network)."
  type        = string

  validation {
    condition     = can(cidrhost(var.subnet, 0)) && can(regex("^[0-9.]+/(1[6-9]|2[0-8])$", var.subnet))
    error_message = "subnet must be an IPv4 network from /16 to /28 such as 10.213.10.0/24."
  }

  validation {
    condition     = can(regex("^(10\\.|192\\.168\\.|172\\.(1[6-9]|2[0-9]|3[01])\\.)", var.subnet))
    error_message = "subnet must be private: inside one of 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16."
  }
}

variable "state_dir" {
  description = "Absolute directory holding one directory per host (overlay upper/work, logs); PROJECT/.orchestrate/ENV/hosts."
  type        = string

  validation {
    condition     = startswith(var.state_dir, "/")
    error_message = "state_dir must be an absolute path such as /srv/project/.orchestrate/dev/hosts."
  }
}

variable "python" {
  description = "Absolute path of the Python interpreter that has the orchestrator package installed."
  type        = string

  validation {
    condition     = startswith(var.python, "/")
    error_message = "python must be an absolute path such as /srv/project/.venv/bin/python."
  }
}

variable "project_dir" {
  description = "Absolute project directory; its SSH key (.orchestrate/ssh/id_ed25519) is authorized on every host."
  type        = string

  validation {
    condition     = startswith(var.project_dir, "/")
    error_message = "project_dir must be an absolute path such as /srv/project."
  }
}

variable "ssh_user" {
  description = "Login user of every host (root, or a user with passwordless sudo whose hosts refuse root's SSH login, as cloud images do)."
  type        = string
  default     = "root"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ssh_user))
    error_message = "ssh_user must be a login name of lowercase letters, digits, '_' and '-', starting with a letter or '_' (e.g. root, admin, ubuntu)."
  }
}
