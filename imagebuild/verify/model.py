"""verify's model: one Item per row of the parity table, and the two special expectations.
Apart from items.py so that the modules adding rows (gpu, service, filebytes) import it without
importing the list that gathers them."""

from __future__ import annotations

from dataclasses import dataclass

ABSENT = "absent"
ANY = None  # no fixed expectation: the two artifacts must only agree

# Row keys written by both sides: items.py (what is expected) and facts.py (what is read).
UNLOCKED_DEBS = "installed but not in the lock"
VENV_TOOLING = "venv tooling (pip, setuptools)"
ARGV = "ENTRYPOINT+CMD / wrapper"
WRAPPER_SHA = "wrapper sha256"
STARTED_BY = "what starts it"
RUNTIME_USER = "runtime user"
ARCHITECTURE = "dpkg --print-architecture"
RUNS_AS_ROOT = "runs as root"
SETUID_ROW = "setuid/setgid files no package owns"

# Read from the VM's disk image itself (never booted), as shipped (diskhygiene.py): row -> what
# it must be; not applicable to a container.
MACHINE_ID = "/etc/machine-id content (disk image)"
AUTHORIZED_KEYS = "authorized SSH keys (disk image)"
HOST_KEYS = "SSH host keys (disk image)"
ROOT_PASSWORD = "root password (disk image)"
HISTORY = "shell history (disk image)"
RANDOM_SEED = "systemd random seed (disk image)"
LEASES = "DHCP leases (disk image)"
JOURNAL = "journal files (disk image)"
CLOUD_STATE = "cloud-init instance state (disk image)"
SIGNING_KEY = "DKMS module-signing private key (disk image)"
DISK_HYGIENE = {
    MACHINE_ID: "",
    AUTHORIZED_KEYS: "none",
    HOST_KEYS: "none",
    ROOT_PASSWORD: "locked",
    HISTORY: "none",
    RANDOM_SEED: "none",
    LEASES: "none",
    JOURNAL: "none",
    CLOUD_STATE: "none",
    SIGNING_KEY: "none",
}


@dataclass(frozen=True)
class Item:
    kind: str  # the facts section it reads (deb, python, import, lib, ...)
    key: str
    container: str | None  # expected value in the container (ANY = only agree with the VM)
    vm: str | None
    shared: bool = True  # must the two values be equal?
    runtime_gpu: bool = False  # needs a GPU at run time: skipped (with the reason) without one

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.key}"
