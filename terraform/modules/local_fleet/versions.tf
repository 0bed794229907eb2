terraform {
  # terraform_data is built in: this module needs no provider download.
  required_version = ">= 1.4"
}
