"""The Packer template and the one place Packer versions differ: parsed with python-hcl2, the
variables the tool writes checked against the declarations, and real `packer validate` runs."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tarfile
from pathlib import Path

import hcl2
import pytest
from ansible.parsing.dataloader import DataLoader
from packaging.version import Version

from imagebuild import machines, packer, provision, requested, roles
from imagebuild.builders import ami, ami_stock, vm
from imagebuild.cache import Cache
from imagebuild.errors import ImageBuildError
from imagebuild.fetch import FetchResult
from imagebuild.inputs import prepare
from imagebuild.lock import lockfile
from imagebuild.resolved import GPU_GUARD, SOURCES_DIR
from imagebuild.spec import load
from tests.conftest import EXAMPLE, run_invoke


def test_template_parses_and_declares_exactly_what_the_tool_writes(tmp_path: Path) -> None:
    spec = load(EXAMPLE / "imagebuild.yaml")
    written = vm.packer_values(spec, tmp_path)
    assert packer.declared_variables() == set(written)
    dest = tmp_path / "x.pkrvars.hcl"
    packer.write_vars(written, dest)
    with dest.open() as f:
        back = hcl2.load(f)
    assert set(back) == set(written)


def test_template_has_both_sources_and_one_build() -> None:
    with (packer.PACKER_DIR / packer.TEMPLATE).open() as f:
        doc = hcl2.load(f)
    sources = {(t.strip('"'), n.strip('"')) for s in doc["source"] for t in s for n in s[t]}
    assert sources == {("qemu", "vm"), ("amazon-ebs", "vm")}
    assert len(doc["build"]) == 1
    assert "packer" not in doc, "required_plugins belongs in plugins.pkr.hcl only"


def test_plugins_file_is_the_only_version_difference() -> None:
    with (packer.PACKER_DIR / packer.PLUGINS).open() as f:
        doc = hcl2.load(f)
    plugins = doc["packer"][0]["required_plugins"][0]
    assert {k.strip('"') for k in plugins if not k.startswith("__")} == {
        "qemu",
        "amazon",
        "ansible",
    }
    assert packer.template_files(Version("1.6.6")) == [packer.TEMPLATE]
    assert packer.template_files(Version("1.11.2")) == [packer.TEMPLATE, packer.PLUGINS]


def test_write_vars_refuses_undeclared_or_missing(tmp_path: Path) -> None:
    spec = load(EXAMPLE / "imagebuild.yaml")
    values = vm.packer_values(spec, tmp_path)
    with pytest.raises(packer.PackerError, match="undeclared \\['surprise'\\]"):
        packer.write_vars({**values, "surprise": "x"}, tmp_path / "a.hcl")
    values.pop("memory")
    with pytest.raises(packer.PackerError, match="missing \\['memory'\\]"):
        packer.write_vars(values, tmp_path / "b.hcl")


def test_strings_are_escaped_for_hcl(tmp_path: Path) -> None:
    spec = load(EXAMPLE / "imagebuild.yaml")
    tricky = 'a "quoted" ${not_interpolated} %{nor_this} back\\slash'
    values = vm.packer_values(spec, tmp_path, name=tricky)
    packer.write_vars(values, tmp_path / "v.hcl")
    text = (tmp_path / "v.hcl").read_text()
    assert '"a \\"quoted\\" $${not_interpolated} %%{nor_this} back\\\\slash"' in text


def _values(tmp_path: Path, **overrides: object) -> dict[str, object]:
    spec = load(EXAMPLE / "imagebuild.yaml")
    vm.make_build_key(tmp_path)  # Packer reads the key at validate time
    for name in ("base.qcow2", "vars.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "sources").mkdir()
    values = vm.packer_values(
        spec,
        tmp_path,
        output_dir=str(tmp_path / "out"),
        base_disk=str(tmp_path / "base.qcow2"),
        base_disk_sha256="0" * 64,
        sources_disk=str(tmp_path / "base.qcow2"),
        sources_dir=str(tmp_path / "sources"),
        ansible_vars_file=str(tmp_path / "vars.json"),
        **overrides,
    )
    return values


def _validate(tmp_path: Path, only: str, **overrides: object) -> subprocess.CompletedProcess[str]:
    values = _values(tmp_path, **overrides)
    packer.write_vars(values, tmp_path / "v.pkrvars.hcl")
    tdir = packer.stage_template(tmp_path / "t")
    return subprocess.run(
        ["packer", "validate", f"-only={only}", "-var-file=../v.pkrvars.hcl", "."],
        cwd=tdir,
        capture_output=True,
        text=True,
        env=packer.run_env(tmp_path),
    )


@pytest.mark.parametrize("only", ["qemu.vm", "amazon-ebs.vm"])
def test_packer_validate_passes_offline(tmp_path: Path, only: str) -> None:
    r = _validate(tmp_path, only)
    assert r.returncode == 0, r.stdout + r.stderr


def test_packer_validate_takes_the_arm64_machine(tmp_path: Path) -> None:
    """The architecture is variables only (board, emulator, CPU and firmware as qemuargs, which
    Packer 1.6.6 reads: its qemu builder has no `firmware` option)."""
    values = machines.MACHINES["arm64"].packer_values("tcg")
    assert values["machine_qemuargs"] == [
        ["-cpu", "max,pauth-impdef=on"],
        ["-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"],
    ]
    r = _validate(tmp_path, "qemu.vm", **values)
    assert r.returncode == 0, r.stdout + r.stderr
    with (tmp_path / "v.pkrvars.hcl").open() as f:
        rows = hcl2.load(f)["machine_qemuargs"]
    assert [[v.strip('"') for v in row] for row in rows] == values["machine_qemuargs"]


def test_packer_validate_catches_a_bad_value(tmp_path: Path) -> None:
    r = _validate(tmp_path, "amazon-ebs.vm", aws_instance_type="")
    assert r.returncode != 0
    assert "instance_type" in r.stdout + r.stderr


def test_the_packer_runner_keeps_its_log_when_the_build_fails(tmp_path: Path) -> None:
    """The one runner every target uses: real `packer validate` then `packer build` (here the
    base disk's checksum is wrong: Packer stops before QEMU starts); the error names the log,
    which holds both runs and outlives the scratch folder."""
    work = tmp_path / "work"
    work.mkdir()
    log = packer.log_file(tmp_path / "cache", "demo")
    with pytest.raises(packer.PackerError, match=f"packer build failed .*full log {log}"):
        packer.build(_values(work), work, "qemu.vm", "cleanup", log, "a build that fails")
    text = log.read_text()
    assert "ecksum" in text, text[-2000:]
    assert not (work / "out").exists()  # cleanup: Packer removed its output folder


def test_build_vm_options_are_checked_once_naming_the_option() -> None:
    from imagebuild.builders.targets import Options

    assert Options().problems("qemu") == [] and Options("abort", "us-east-2").problems("ami") == []
    assert Options(region="eu-west-1").problems("qemu") == ["--aws-region: for --target ami only"]
    assert Options(region="eu-west-1").problems("gce") == ["--aws-region: for --target ami only"]
    assert Options(region="eu-west-1; rm -rf /").problems("ami") == [
        "--aws-region: 'eu-west-1; rm -rf /' is not an AWS region like eu-west-1 "
        "(spec field vm.ami.region)"
    ]
    assert Options(on_error="ask").problems("azure") == [
        "--target: 'azure' is not one of qemu, ami, gce",
        "--on-error: 'ask' is not one of cleanup, abort",
    ]


def test_plan_shows_the_ami_methods_own_fields() -> None:
    from imagebuild.plan import ami_line

    ami_spec = load(EXAMPLE / "imagebuild.yaml").vm.ami
    assert ami_spec is not None and ami_spec.method == "import"
    assert "import: the qcow2's disk" in ami_line(ami_spec)
    assert ami_spec.instance_type not in ami_line(ami_spec)  # a stock-only field
    stock = ami_line(dataclasses.replace(ami_spec, method="stock"))
    assert f"on a {ami_spec.instance_type} from {ami_spec.source_ami}" in stock


@pytest.mark.network
def test_ami_target_asks_for_credentials_before_building(
    tmp_path: Path, locked_example: Path, cache_dir: Path
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_PROFILE": "",
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    r = run_invoke(
        "build-vm",
        "--spec",
        str(locked_example),
        "--target",
        "ami",
        "--cache-dir",
        str(cache_dir),
        "--dist",
        str(tmp_path / "dist"),
        env=env,
    )
    assert r.returncode != 0
    assert "needs AWS credentials (nothing was built)" in r.stderr and "Traceback" not in r.stderr
    assert "build-vm: base disk" not in r.stderr
    assert not (tmp_path / "dist").exists()


@pytest.mark.network
def test_ami_uploads_the_app_the_stock_ami_lacks(tmp_path: Path, locked_example: Path) -> None:
    """A stock AMI has no app (the qemu base disk does): the uploaded folder carries the app
    archive and the playbook variables point the app role at it."""
    spec = load(locked_example)
    lock = lockfile.read(locked_example.with_suffix(".lock"))
    repo, wheels = tmp_path / "repo", tmp_path / "wheels"
    for d in (repo, wheels):
        d.mkdir()
        (d / "marker").write_text(d.name)
    fetched = FetchResult(0, 0, 0, repo, repo, wheels)
    inputs = prepare(requested.of(spec), lock, Cache(tmp_path / "cache"), fetched)
    archive = ami_stock.stock_sources(inputs, tmp_path / "up")
    assert archive == f"{SOURCES_DIR}/app.tar"
    with tarfile.open(tmp_path / "up" / "app.tar") as tar:
        names = tar.getnames()
    assert names[0] == spec.app.dest.strip("/") and names[-1] == inputs.resolved.app_stamp.lstrip(
        "/"
    )
    assert (tmp_path / "up" / "wheels" / "marker").read_text() == "wheels"
    vars_file = vm.ansible_vars_file(inputs.resolved, "", tmp_path / "inv.json", archive)
    values = DataLoader().load_from_file(str(vars_file))  # as ansible-playbook reads it
    assert values["imagebuild_app_archive"] == archive
    assert values["imagebuild_repo_dir"] == f"{SOURCES_DIR}/repo"


def test_in_image_paths_are_the_roles_own() -> None:
    """The sources folder is read from role vm_sources (its one place): vm_finalize, which
    removes it, names the same; the GPU guard imagebuild puts in front of the entrypoint is the
    path role nvidia_driver falls back to when run on its own."""
    assert SOURCES_DIR == "/var/lib/imagebuild"
    assert roles.defaults("vm_finalize")["imagebuild_sources_dir"] == SOURCES_DIR
    fallback = roles.defaults("nvidia_driver")["nvidia_driver_guard"]
    assert f"default('{GPU_GUARD}')" in fallback


def test_vm_ansible_strategy_is_mitogen_unless_turned_off(monkeypatch) -> None:
    monkeypatch.delenv(provision.STRATEGY_ENV, raising=False)
    name, env = provision.ssh_strategy()
    plugins = Path(env[0].split("=", 1)[1])
    assert name == "mitogen_linear" and env[1] == "ANSIBLE_STRATEGY=mitogen_linear"
    assert (plugins / "mitogen_linear.py").is_file()
    monkeypatch.setenv(provision.STRATEGY_ENV, "linear")
    assert provision.ssh_strategy() == ("linear", [])
    monkeypatch.setenv(provision.STRATEGY_ENV, "free")
    with pytest.raises(ImageBuildError, match="IMAGEBUILD_ANSIBLE_STRATEGY='free'"):
        provision.ssh_strategy()


def test_phases_split_a_qemu_build_at_packers_own_lines() -> None:
    timeline = [
        (1.0, "==> qemu.vm: Starting VM, booting disk image"),
        (24.0, "==> qemu.vm: Connected to SSH!"),
        (40.5, "==> qemu.vm: Gracefully halting virtual machine..."),
        (43.5, "Build 'qemu.vm' finished after 43 seconds."),
    ]
    assert packer.phases(timeline) == {"boot to SSH": 24.0, "provisioning": 16.5, "shutdown": 3.0}


def test_caller_ip_is_checked_before_it_opens_ssh(tmp_path: Path) -> None:
    """The AMI builder's SSH port opens to the caller's IP only; whatever the lookup answers
    is parsed as an address first (a body that is not one stops the build, naming the field)."""
    import http.server
    import threading

    answers = iter([b"203.0.113.7\n", b"203.0.113.7/0; rm -rf /\n"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = next(answers)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        assert ami_stock.caller_public_ip(url) == "203.0.113.7"
        with pytest.raises(ImageBuildError, match="vm.ami.ssh_cidrs"):
            ami_stock.caller_public_ip(url)
    finally:
        server.shutdown()


def test_ami_values_follow_the_spec(tmp_path: Path) -> None:
    """ssh_username, encryption and SSH networks reach the template; every build's AMI name is
    new."""
    spec = load(EXAMPLE / "imagebuild.yaml")
    ami = dataclasses.replace(
        spec.vm.ami, ssh_username="debian", encrypt_boot=False, ssh_cidrs=["198.51.100.0/24"]
    )
    spec = dataclasses.replace(spec, vm=dataclasses.replace(spec.vm, ami=ami))
    values = vm.packer_values(spec, tmp_path)
    assert values["aws_ssh_username"] == "debian" and values["aws_encrypt_boot"] is False
    assert values["aws_ssh_cidrs"] == ["198.51.100.0/24"]
    assert re.fullmatch(rf"{spec.name}-{spec.version}-\d{{8}}T\d{{6}}Z", values["aws_ami_name"])


def test_no_aws_credentials_is_a_clear_error_before_anything(tmp_path: Path, monkeypatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_PROFILE", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ami.AwsCredentialsError, match="nothing was built"):
        ami.session(load(EXAMPLE / "imagebuild.yaml"))
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(ami.AwsCredentialsError, match="no-such-profile"):
        ami.session(load(EXAMPLE / "imagebuild.yaml"))
