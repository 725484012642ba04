"""Run inside an artifact (container or VM) as root by its own Python: are the installed files
the bytes their packages recorded, with the modes, owners, types and links they had? Prints
JSON:

- `deb`, `conffiles`: what `dpkg --verify` finds changed or missing (plain files, conffiles);
  files it cannot read are not findings;
- `record`: venv files whose sha256 is not the one their wheel's RECORD lists, or missing;
  `venv-extra`: venv files no RECORD lists (`python -m venv`'s own files among them);
- `app`: sha256 of every file of the app folder (byte-compiled caches left out);
- `unlocked`: programs and /usr/local files no package owns, and /etc/ld.so.preload;
- `meta`: what every path is (`describe`), compared by verify between the artifacts and, for
  setuid/setgid/world-writable ones, against the .debs: `packages` (name -> [version,
  {path: description}] for every path dpkg lists), `trees` (the venv's and the app folder's
  entries), `mounts` (mount points: the engine's and the boot's, not the image's),
  `overrides` (dpkg-statoverride: path -> "MODE USER:GROUP").

Argument: JSON `{"venv": PATH or null, "app": PATH, "skip": [paths that are ours],
"contents": false}` (optional; false: no file is read, only `unlocked` and `meta`: verify reads
a VM's file contents from its disk image on the host: imagebuild/verify/diskbytes.py).
"""

import base64
import contextlib
import glob
import grp
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import sys

LIMIT = 20  # files named per finding; the count says how many there are
RECORD = re.compile(r"/lib/python3[^/]*/site-packages/[^/]*\.dist-info/RECORD")
KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "link",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def listed(paths):
    paths = sorted(paths)
    more = f" (+{len(paths) - LIMIT} more)" if len(paths) > LIMIT else ""
    return " ".join(paths[:LIMIT]) + more if paths else "none"


def package_files():
    """The regular files packages ship (dpkg's md5sums): a missing directory is no finding."""
    files: set[str] = set()
    for sums in glob.glob("/var/lib/dpkg/info/*.md5sums"):
        with open(sums) as f:
            files.update("/" + line.rstrip("\n").split("  ", 1)[-1] for line in f)
    return files


def dpkg_verify(output):
    # One line per finding: 9 flag characters (or `missing` padded), a space, `c` for a
    # conffile (else a space), a space, the path. Flag 3 is the digest: `5` differs.
    plain: list[str] = []
    conf: list[str] = []
    files = None
    for line in output.splitlines():
        flags, conffile, path = line[:9], line[10:11] == "c", line[12:]
        if flags.startswith("missing"):
            files = package_files() if files is None else files
            if not conffile and path not in files:
                continue
            path += " (missing)"
        elif flags[2] != "5":
            continue
        (conf if conffile else plain).append(path)
    return with_package(plain), with_package(conf)


def with_package(paths, owner=None):
    """`path (package)` for the paths that will be shown: which package to look at (`owner`:
    path -> package where the caller knows it, else dpkg-query's)."""
    shown = sorted(paths)[:LIMIT]
    bare = [p.removesuffix(" (missing)") for p in shown]
    if owner is None:
        r = (
            subprocess.run(["dpkg-query", "-S", *bare], capture_output=True, text=True)
            if bare
            else None
        )
        owner = {}
        for line in r.stdout.splitlines() if r else []:
            pkg, _, path = line.partition(": ")
            owner.setdefault(path, pkg)
    return [f"{p} ({owner.get(b, '?')})" for p, b in zip(shown, bare, strict=True)] + sorted(paths)[
        LIMIT:
    ]


def venv_record(venv, digests, here=None):
    """The files RECORDs list whose bytes differ (or are gone), the files none lists, and one
    digest over the whole venv (byte-code caches aside: root's imports write them). `here`:
    where the venv is read if not at `venv` (a copy of the artifact's; paths stay `venv`'s)."""
    changed, listed_files = [], set()
    records = [p for p in digests if RECORD.fullmatch(p[len(venv) :]) and p.startswith(venv)]
    for record in sorted(records):  # found by the walk: no link followed to reach one
        site = os.path.dirname(os.path.dirname(record))
        with open((venv if here is None else here) + record[len(venv) :]) as f:
            for row in f:
                parts = row.rstrip("\n").rsplit(",", 2)
                if len(parts) != 3:
                    continue
                rel, digest, _ = parts
                path = os.path.normpath(os.path.join(site, rel.strip('"')))
                listed_files.add(path)
                if not digest.startswith("sha256="):
                    continue
                if path not in digests:
                    changed.append(f"{path} (missing)")
                elif b64(digests[path]) != digest[len("sha256=") :]:
                    changed.append(path)
    extra = [p for p in digests if p not in listed_files]
    whole = hashlib.sha256()
    for path in sorted(digests):
        whole.update(f"{os.path.relpath(path, venv)}\0{digests[path].hex()}\n".encode())
    return changed, extra, f"{whole.hexdigest()} ({len(digests)} files)"


def b64(digest):
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def survey(top, hashing=True, describing=True):
    """One walk below `top` (links not followed, byte-code caches aside: root's imports write
    them in one artifact and not the other): {path: sha256} of the regular files (unless not
    `hashing`) and {path: description} of every entry, `top` included (unless not
    `describing`)."""
    digests: dict[str, bytes] = {}
    meta: dict[str, str] = {}
    if not os.path.isdir(top):
        return digests, meta
    if describing:
        meta[top] = describe(top)
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + [f for f in files if not f.endswith(".pyc")]:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if describing:
                meta[path] = describe(path, st)
            if hashing and stat.S_ISREG(st.st_mode):
                digests[path] = sha256(path)
    return digests, meta


NAMES: dict[tuple[str, int], str] = {}


def name_of(kind, number):
    """A user's or group's name in this artifact (the numbers of system users differ between
    the container and the VM, their names do not); the number where it has none."""
    key = (kind, number)
    if key not in NAMES:
        try:
            NAMES[key] = (pwd.getpwuid if kind == "user" else grp.getgrgid)(number)[0]
        except KeyError:
            NAMES[key] = str(number)
    return NAMES[key]


def describe(path, st=None):
    """`KIND MODE USER:GROUP` (`file 4755 root:root`), `link USER:GROUP -> TARGET`, an
    executable's file capabilities appended; `missing` if there is no such path."""
    if st is None:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError as e:
            return f"unreadable ({e.strerror})"
    kind = KINDS.get(stat.S_IFMT(st.st_mode), "other")
    owner = f"{name_of('user', st.st_uid)}:{name_of('group', st.st_gid)}"
    if kind == "link":
        return f"link {owner} -> {os.readlink(path)}"
    text = f"{kind} {stat.S_IMODE(st.st_mode):04o} {owner}"
    if kind == "file" and st.st_mode & 0o111:
        # none is ENODATA, as is a filesystem without xattrs
        with contextlib.suppress(OSError):
            text += f" capability {os.getxattr(path, 'security.capability').hex()}"
    return text


def package_lists():
    """{package: [path, ...]} from dpkg's .list files, each path as its package ships it."""
    out = {}
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        with open(lst) as f:
            paths = [os.path.normpath(line.rstrip("\n")) for line in f if line.strip()]
        out[os.path.basename(lst)[: -len(".list")]] = paths
    return out


def installed():
    """{package (as its .list file is named): version} of what is installed."""
    fmt = "${db:Status-Abbrev}\t${binary:Package}\t${Version}\n"
    r = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True)
    rows = (line.split("\t") for line in r.stdout.splitlines())
    # Status-Abbrev: wanted, state, error; state `i` is installed (held ones too)
    return {row[1]: row[2] for row in rows if len(row) == 3 and row[0][1:2] == "i"}


def packages_meta(lists):
    versions, seen = installed(), {}
    out = {}
    for name, paths in lists.items():
        if name in versions:
            for p in paths:
                if p not in seen:
                    seen[p] = describe(p)
            out[name] = [versions[name], {p: seen[p] for p in paths}]
    return out


def mount_points():
    """Every mount point (`\\040` and friends are mountinfo's escapes)."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f if len(line.split()) > 4}
    return sorted(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points)


def stat_overrides(path="/var/lib/dpkg/statoverride"):
    """dpkg-statoverride's records: the modes dpkg itself applies instead of the .deb's."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            rows = [line.split(None, 3) for line in f]
    except OSError:
        return out
    for row in rows:
        if len(row) == 4 and re.fullmatch(r"[0-7]{1,4}", row[2]):
            out[row[3].rstrip("\n")] = f"{int(row[2], 8):04o} {row[0]}:{row[1]}"
    return out


def owned(lists):
    """Every path some package ships, under both names where /usr is merged."""
    paths = set()
    for files in lists.values():
        for p in files:
            paths.add(p)
            if p.startswith(("/bin/", "/sbin/", "/lib/", "/lib64/")):
                paths.add("/usr" + p)
    return paths


def unlocked(skip, mine):
    found = []
    for top in ("/usr/bin", "/usr/sbin", "/usr/local"):
        for root, _, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                if path in mine or path in skip:
                    continue
                # update-alternatives' links: dpkg's .list files do not hold them
                if os.path.islink(path) and os.readlink(path).startswith("/etc/alternatives/"):
                    continue
                found.append(path)
    if os.path.exists("/etc/ld.so.preload"):
        found.append("/etc/ld.so.preload")
    return found


def main(want):
    contents = want.get("contents", True)
    # dpkg hashes the packages' files while this process hashes the venv's: two CPUs busy.
    dpkg = (
        subprocess.Popen(["dpkg", "--verify"], stdout=subprocess.PIPE, text=True)
        if contents
        else None
    )
    lists = package_lists()
    out = {"unlocked": listed(unlocked(want["skip"], owned(lists)))}
    trees = {}
    if want.get("venv"):
        digests, trees = survey(want["venv"], hashing=contents)
        if contents:
            changed, extra, whole = venv_record(want["venv"], digests)
            out |= {"record": listed(changed), "venv-extra": listed(extra), "venv": whole}
    app, app_meta = survey(want["app"], hashing=contents)
    if contents:
        out["app"] = {os.path.relpath(p, want["app"]): d.hex() for p, d in app.items()}
    out["meta"] = {
        "packages": packages_meta(lists),
        "trees": trees | app_meta,
        "mounts": mount_points(),
        "overrides": stat_overrides(),
    }
    if dpkg is None:
        return out
    found = dpkg.communicate()[0]
    if dpkg.returncode != 0:  # findings exit 0 too: this one did not check (a dead dpkg)
        sys.exit(f"dpkg --verify failed: exit {dpkg.returncode}")
    plain, conf = dpkg_verify(found)
    out |= {"deb": listed(plain), "conffiles": listed(conf)}
    return out


if __name__ == "__main__":  # `python -c SCRIPT ARG` runs it; tests import its functions
    print(json.dumps(main(json.loads(sys.argv[1]))))
