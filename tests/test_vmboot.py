"""VM boot helpers, pure logic on files: the accelerator choice and the /dev/kvm mode libvirt
needs to keep its QEMU capabilities cache."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from imagebuild import vmboot
from imagebuild.verify import hosts


def test_forced_accelerator_wins(monkeypatch) -> None:
    monkeypatch.setenv("IMAGEBUILD_ACCEL", "tcg")
    assert vmboot.probe_accelerator() == ("tcg", "forced by IMAGEBUILD_ACCEL")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the kvm group needs root")
def test_root_only_kvm_device_gets_debians_udev_mode(tmp_path: Path) -> None:
    try:
        kvm = grp.getgrnam("kvm").gr_gid
    except KeyError:
        pytest.skip("no kvm group on this host")
    dev = tmp_path / "kvm"
    dev.touch(mode=0o600)
    os.chown(dev, 0, 0)
    hosts.kvm_device_for_libvirt(dev)
    st = dev.stat()
    assert (st.st_gid, st.st_mode & 0o777) == (kvm, 0o660)
    hosts.kvm_device_for_libvirt(dev)  # already aligned: left as it is
    assert dev.stat().st_ctime_ns == st.st_ctime_ns
    hosts.kvm_device_for_libvirt(tmp_path / "absent")  # no device: nothing to do, no error
