"""The VM's hygiene read from its disk image itself, as shipped (never booted: the booted copy
makes its own machine-id, keys and leases): debugfs reads the root partition's copy
(diskread.py makes it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from imagebuild import vmboot
from imagebuild.verify import model as row


def disk_hygiene(part: Path) -> dict[str, str]:
    """Read the image itself (never booted; the booted copy makes its own machine-id) from its
    root partition's copy."""

    def ls(path: str) -> list[str]:
        r = subprocess.run(
            ["debugfs", "-R", f"ls -p {path}", str(part)], capture_output=True, text=True
        )
        return [ln.split("/")[5] for ln in r.stdout.splitlines() if ln.count("/") >= 6]

    keys = [f for f in ls("/root/.ssh") if f.startswith("authorized_keys")]
    homes = ["/root", *[f"/home/{h}" for h in ls("/home") if h not in (".", "..")]]
    history = [f"{h}/{f}" for h in homes for f in ls(h) if f.endswith("_history")]
    seed = [f for f in ls("/var/lib/systemd") if f == "random-seed"]
    leases = [f for f in ls("/var/lib/dhcp") if f.endswith(".leases") or "dhclient" in f]
    journal = [f for f in ls("/var/log/journal") if f not in (".", "..")]
    host_keys = [f for f in ls("/etc/ssh") if f.startswith("ssh_host_")]
    # what cloud-init keeps of a boot: a clone with it would skip its own first boot
    cloud = [f for f in ls("/var/lib/cloud") if f in ("instance", "instances", "data", "sem")]
    shadow = vmboot.debugfs_cat(part, "/etc/shadow").decode()
    root_pw = next((ln.split(":")[1] for ln in shadow.splitlines() if ln.startswith("root:")), "")
    dkms = [f for f in ls("/var/lib/dkms") if f == "mok.key"]  # signs what DKMS builds
    return {
        row.MACHINE_ID: vmboot.debugfs_cat(part, "/etc/machine-id").decode().strip(),
        row.AUTHORIZED_KEYS: " ".join(keys) or "none",
        row.HOST_KEYS: " ".join(host_keys) or "none",
        row.ROOT_PASSWORD: "locked"
        if root_pw[:1] in ("*", "!")
        else ("EMPTY" if not root_pw else "SET"),
        row.HISTORY: " ".join(history) or "none",
        row.RANDOM_SEED: " ".join(seed) or "none",
        row.LEASES: " ".join(leases) or "none",
        row.JOURNAL: " ".join(journal) or "none",
        row.CLOUD_STATE: " ".join(cloud) or "none",
        row.SIGNING_KEY: " ".join(f"/var/lib/dkms/{f}" for f in dkms) or "none",
    }
