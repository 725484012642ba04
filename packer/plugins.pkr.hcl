# Read only by Packer >= 1.7, where builders and provisioners are plugins (imagebuild.packer
# leaves this file out for Debian's Packer 1.6.6, which bundles them and rejects this block).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = ">= 1.1.0"
    }
  }
}
