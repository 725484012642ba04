# imagebuild's VM build: one template, two sources (qemu for local images, amazon-ebs for AMIs),
# one build whose Ansible provisioner runs ansible/vm.yml: the container's own site.yml plus the
# VM-only plays. imagebuild writes only the variable values (a .pkrvars.hcl) and runs
# `packer build -only=qemu.vm` or `-only=amazon-ebs.vm`. Packer >= 1.7 also reads
# plugins.pkr.hcl (required_plugins), which Debian's Packer 1.6.6 rejects; imagebuild.packer
# decides whether to include it. That is the only difference between the two.

variable "name" {
  type        = string
  description = "Spec name."
}

variable "version" {
  type        = string
  description = "Spec version."
}

variable "vm_name" {
  type        = string
  description = "File name of the disk Packer writes in output_dir."
}

variable "qemu_name" {
  type        = string
  description = "QEMU process name (-name), so a stray process can be found and stopped."
}

variable "output_dir" {
  type        = string
  description = "Packer's output directory (must not exist yet)."
}

variable "base_disk" {
  type        = string
  description = "A throw-away qcow2 overlay of the base disk imagebuild made from the container's layers: the pass checks and inventories it; the outputs are made from the base disk itself."
}

variable "base_disk_sha256" {
  type        = string
  description = "sha256 of base_disk."
}

variable "sources_disk" {
  type        = string
  description = "Read-only ext4 image with the local apt repo and wheelhouse (qemu)."
}

variable "sources_dir" {
  type        = string
  description = "The same sources as a folder, uploaded to the instance (amazon-ebs)."
}

variable "disk_size" {
  type        = string
  description = "Virtual disk size, e.g. 6144M."
}

variable "memory" {
  type        = number
  description = "Guest memory in MiB."
}

variable "cpus" {
  type        = number
  description = "Guest CPUs."
}

variable "qemu_binary" {
  type        = string
  description = "The system emulator of the VM's architecture (imagebuild.machines)."
}

variable "machine_type" {
  type        = string
  description = "QEMU's board: pc (amd64) or virt (arm64)."
}

variable "machine_qemuargs" {
  type        = list(list(string))
  description = "The CPU model (-cpu max under TCG: the default lacks what numpy needs) and the firmware ROM (arm64: UEFI)."
}

variable "accelerator" {
  type        = string
  description = "QEMU accelerator imagebuild probed: kvm or tcg."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Per-build SSH key (vm_finalize removes its public half from the image)."
}

variable "ssh_host_port" {
  type        = number
  description = "The one host port Packer connects to; imagebuild.sshgate forwards it once the guest's sshd answers."
}

variable "guest_qemuargs" {
  type        = list(list(string))
  description = "imagebuild.sshgate.Gate.qemu_args: SSH-only user networking (a probe port), the key as systemd credential, QEMU's monitor."
}

variable "serial_log" {
  type        = string
  description = "Where the guest's serial console is written."
}

variable "ansible_dir" {
  type        = string
  description = "The project's ansible/ folder (vm.yml, site.yml, roles/)."
}

variable "ansible_vars_file" {
  type        = string
  description = "JSON file of playbook variables, the same ones the container build uses."
}

variable "ansible_user" {
  type        = string
  description = "SSH user Ansible logs in as: root (qemu) or aws_ssh_username (amazon-ebs)."
}

variable "ansible_become" {
  type        = bool
  description = "Whether Ansible must sudo (amazon-ebs: the login user is not root)."
}

variable "ansible_strategy_env" {
  type        = list(string)
  description = "ANSIBLE_STRATEGY(_PLUGINS)=... for a faster strategy (mitogen); empty = Ansible's own."
}

variable "manifest_file" {
  type        = string
  description = "Where the manifest post-processor writes."
}

variable "aws_region" {
  type        = string
  description = "amazon-ebs: region."
}

variable "aws_instance_type" {
  type        = string
  description = "amazon-ebs: builder instance type."
}

variable "aws_source_ami" {
  type        = string
  description = "amazon-ebs: the stock Debian AMI to start from."
}

variable "aws_ssh_username" {
  type        = string
  description = "amazon-ebs: login user of the source AMI (Debian's is admin)."
}

variable "aws_ami_name" {
  type        = string
  description = "amazon-ebs: AMI name, unique per build (name-version-build id)."
}

variable "aws_encrypt_boot" {
  type        = bool
  description = "amazon-ebs: encrypt the AMI's boot volume snapshot (vm.ami.encrypt_boot)."
}

variable "aws_ssh_cidrs" {
  type        = list(string)
  description = "amazon-ebs: who may reach the builder's SSH port (default: the caller's IP/32)."
}

source "qemu" "vm" {
  vm_name          = var.vm_name
  output_directory = var.output_dir
  disk_image       = true
  iso_url          = var.base_disk
  iso_checksum     = "sha256:${var.base_disk_sha256}"
  use_backing_file = false
  disk_size        = var.disk_size
  format           = "qcow2"
  # No convert here: imagebuild compresses the disk while it makes the OVA from it, one
  # single-threaded qemu-img per core (Packer's own convert took ~15 s before any format).
  skip_compaction  = true
  disk_compression = false
  qemu_binary      = var.qemu_binary
  machine_type     = var.machine_type
  accelerator      = var.accelerator
  headless         = true
  vnc_bind_address = "127.0.0.1"
  memory           = var.memory
  cpus             = var.cpus
  communicator     = "ssh"
  ssh_username     = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout      = "15m"
  host_port_min    = var.ssh_host_port
  host_port_max    = var.ssh_host_port
  # After vm_finalize removed the per-instance state, power off without stopping services:
  # an orderly stop would write it again (systemd saves a random seed, journald flushes,
  # ifdown's DHCP release rewrites the lease file). --force still kills every process and
  # unmounts the filesystems, so the disk is clean.
  shutdown_command = "sync; systemctl poweroff --force"
  shutdown_timeout = "5m"
  boot_wait        = "1s" # no boot command to type: start polling SSH at once
  # The whole device list is given here, so Packer's defaults (SSH forwarded on every
  # interface) do not apply. guest_qemuargs (the same as every other boot of the image): SSH on
  # 127.0.0.1 only and nothing else (restrict=on: the build is hermetic), the build key as
  # systemd's login credential; and QEMU's monitor, through which imagebuild forwards Packer's
  # port only once sshd answers (imagebuild/sshgate.py: no handshake stuck in QEMU's back-off).
  # Also: discard=unmap, so vm_finalize's fstrim drops the blocks of what it deleted from the
  # disk file; the sources disk read-only.
  qemuargs = concat([
    ["-name", var.qemu_name],
  ], var.machine_qemuargs, [
    ["-drive", "file={{ .OutputDir }}/{{ .Name }},if=virtio,cache=writeback,discard=unmap,detect-zeroes=unmap,format=qcow2"],
    ["-drive", "file=${var.sources_disk},if=virtio,format=raw,readonly=on"],
    ["-serial", "file:${var.serial_log}"],
  ], var.guest_qemuargs)
}

source "amazon-ebs" "vm" {
  region        = var.aws_region
  instance_type = var.aws_instance_type
  source_ami    = var.aws_source_ami
  ami_name      = var.aws_ami_name
  ssh_username  = var.aws_ssh_username
  # Packer's temporary key leaves the image with the build; SSH from the caller only (Packer's
  # default is 0.0.0.0/0); the snapshot encrypted (EBS default key unless the account sets one).
  # IMDSv2 (imds_support/metadata_options) exists only in the amazon plugin >= 1.1, not in
  # Debian's Packer 1.6.6: see the README's AMI section.
  ssh_clear_authorized_keys             = true
  temporary_security_group_source_cidrs = var.aws_ssh_cidrs
  encrypt_boot                          = var.aws_encrypt_boot
  ena_support                           = true
  tags = {
    Name    = var.name
    Version = var.version
  }
}

build {
  sources = ["source.qemu.vm", "source.amazon-ebs.vm"]

  # A stock AMI has no sources disk: upload the same repo + wheelhouse instead.
  provisioner "shell" {
    only   = ["amazon-ebs.vm"]
    inline = ["sudo install -d -o ${var.aws_ssh_username} /var/lib/imagebuild"]
  }

  provisioner "file" {
    only        = ["amazon-ebs.vm"]
    source      = "${var.sources_dir}/"
    destination = "/var/lib/imagebuild"
  }

  provisioner "ansible" {
    playbook_file   = "${var.ansible_dir}/vm.yml"
    user            = var.ansible_user
    use_proxy       = false # Packer's proxy offers only ssh-rsa, which OpenSSH 9 refuses
    extra_arguments = concat(var.ansible_become ? ["--become"] : [], ["--extra-vars", "@${var.ansible_vars_file}"])
    ansible_env_vars = concat([
      "ANSIBLE_CONFIG=${var.ansible_dir}/ansible.cfg",
      "ANSIBLE_ROLES_PATH=${var.ansible_dir}/roles",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_NOCOLOR=1",
      # Ansible's temp files on the guest's tmpfs: never on the image's disk, and vm_finalize's
      # clean-up does not pull them from under the running task.
      "ANSIBLE_REMOTE_TMP=/dev/shm/imagebuild-ansible",
      "ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks", # per-task seconds in the log
    ], var.ansible_strategy_env)
  }

  post-processor "manifest" {
    output     = var.manifest_file
    strip_path = true
  }
}
