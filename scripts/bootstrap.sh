#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (as root), then runs the given command from the
# project venv:  bash scripts/bootstrap.sh invoke all ...   |   bash scripts/bootstrap.sh pytest
# Every step checks before it acts, so re-running costs a few seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IMAGEBUILD_VENV:-$ROOT/.venv}"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

APT_PACKAGES=(
  python3-venv python3-apt dpkg-dev mmdebstrap      # venv, host-side resolver, local apt repo, rootfs
  docker.io skopeo docker-registry                  # engine, OCI inspection, a real local registry
  packer qemu-system-x86 qemu-utils                 # VM builds
  grub-pc-bin fdisk e2fsprogs                       # bootable disk without loop mounts
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-dev pkg-config  # verify + libvirt-python
  libxml2-utils                                     # virt-xml-validate's xmllint: domains checked
  vagrant vagrant-libvirt                           # `vagrant up` of the built box
  cloud-image-utils virt-v2v                        # a NoCloud seed; a third-party OVA reader
  dosfstools mtools                                 # the Vagrant box's seed, reproducible
  bubblewrap                                        # rebuild --check reads a shipped disk jailed
  qemu-user-static binfmt-support arch-test         # base.architectures: arm64 built under emulation
  qemu-system-arm qemu-efi-aarch64                  # build-vm --arch arm64: its board and UEFI
  openssh-client curl ca-certificates git
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's interpreter on purpose: python3-apt (the lock resolver) only imports under it, and it
# is the interpreter every image gets, so host and targets agree on 3.11.
# The builder pins itself: every Python dependency (and theirs) from requirements.lock, by
# version and sha256 (`uv pip compile pyproject.toml --extra dev --generate-hashes`), so two
# fresh machines install the same bytes; then imagebuild itself, without dependencies.
stamp="$VENV/.bootstrap-$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  log "creating venv $VENV (dependencies from requirements.lock)"
  [[ -x "$VENV/bin/python" ]] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$ROOT/requirements.lock"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$ROOT"
  rm -f "$VENV"/.bootstrap-* && touch "$stamp"
fi

# dockerd: no systemd here. No bridge, no iptables: builds use host networking, tests --network none.
if ! "$VENV/bin/python" -c 'import docker; docker.from_env().ping()' >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup /usr/sbin/dockerd --bridge=none --iptables=false >/var/log/imagebuild-dockerd.log 2>&1 &
  for _ in $(seq 60); do
    "$VENV/bin/python" -c 'import docker; docker.from_env().ping()' >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$VENV/bin/python" -c 'import docker; docker.from_env().ping()' >/dev/null \
    || { log "dockerd did not come up; see /var/log/imagebuild-dockerd.log"; exit 1; }
fi

# arm64's binaries run through qemu-user-static: its binfmt_misc entry (F flag: usable inside
# containers). binfmt-support's own service needs systemd, absent here. Not fatal: where the
# kernel refuses, only a build of another architecture is refused (imagebuild/emulation.py).
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  { mountpoint -q /proc/sys/fs/binfmt_misc \
      || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; } 2>/dev/null \
    && update-binfmts --enable qemu-aarch64 2>/dev/null \
    || log "binfmt_misc unavailable: builds of arm64 (base.architectures) will be refused"
fi

cd "$ROOT"
# /usr/bin before /usr/local/bin: Debian's docker CLI (BuildKit without buildx) over a newer client.
export PATH="$VENV/bin:/usr/sbin:/usr/bin:$PATH"
(($#)) || exit 0
exec "$@"
