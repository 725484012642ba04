"""Run inside an artifact (container or VM) as root by its own Python: are the installed files
the bytes their packages recorded? Prints JSON:

- `deb`, `conffiles`: what `dpkg --verify` finds changed or missing (plain files, conffiles);
  files it cannot read are not findings;
- `record`: venv files whose sha256 is not the one their wheel's RECORD lists, or missing;
  `venv-extra`: venv files no RECORD lists (`python -m venv`'s own files among them);
- `app`: sha256 of every file of the app folder (byte-compiled caches left out);
- `unlocked`: programs and /usr/local files no package owns, and /etc/ld.so.preload.

Argument: JSON `{"venv": PATH or null, "app": PATH, "skip": [paths that are ours]}`.
"""

import base64
import glob
import hashlib
import json
import os
import subprocess
import sys

want = json.loads(sys.argv[1])
LIMIT = 20  # files named per finding; the count says how many there are


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


def with_package(paths):
    """`path (package)` for the paths that will be shown: which package to look at."""
    shown = sorted(paths)[:LIMIT]
    bare = [p.removesuffix(" (missing)") for p in shown]
    r = (
        subprocess.run(["dpkg-query", "-S", *bare], capture_output=True, text=True)
        if bare
        else None
    )
    owner: dict[str, str] = {}
    for line in r.stdout.splitlines() if r else []:
        pkg, _, path = line.partition(": ")
        owner.setdefault(path, pkg)
    return [f"{p} ({owner.get(b, '?')})" for p, b in zip(shown, bare, strict=True)] + sorted(paths)[
        LIMIT:
    ]


def venv_record(venv):
    """The files RECORDs list whose bytes differ (or are gone), the files none lists, and one
    digest over the whole venv (byte-code caches aside: root's imports write them)."""
    digests = file_digests(venv)  # every file read once
    changed, listed_files = [], set()
    for record in glob.glob(f"{venv}/lib/python3*/site-packages/*.dist-info/RECORD"):
        site = os.path.dirname(os.path.dirname(record))
        with open(record) as f:
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


def file_digests(top):
    """{path: sha256} of every regular file below `top`, byte-code caches aside (root's imports
    write them in one artifact and not the other)."""
    out = {}
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".pyc") and os.path.isfile(path):
                out[path] = sha256(path)
    return out


def tree(top):
    return {os.path.relpath(p, top): d.hex() for p, d in file_digests(top).items()}


def owned():
    """Every path some package ships, under both names where /usr is merged."""
    paths = set()
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        with open(lst) as f:
            for line in f:
                p = line.rstrip("\n")
                paths.add(p)
                if p.startswith(("/bin/", "/sbin/", "/lib/", "/lib64/")):
                    paths.add("/usr" + p)
    return paths


def unlocked(skip):
    mine, found = owned(), []
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


# dpkg hashes the packages' files while this process hashes the venv's: two CPUs busy.
dpkg = subprocess.Popen(["dpkg", "--verify"], stdout=subprocess.PIPE, text=True)
out = {"unlocked": listed(unlocked(want["skip"]))}
if want.get("venv"):
    changed, extra, whole = venv_record(want["venv"])
    out |= {"record": listed(changed), "venv-extra": listed(extra), "venv": whole}
out["app"] = tree(want["app"]) if os.path.isdir(want["app"]) else {}
plain, conf = dpkg_verify(dpkg.communicate()[0])
out |= {"deb": listed(plain), "conffiles": listed(conf)}
print(json.dumps(out))
