"""Resolve package closures with python-apt in a private apt root.

Run as a script under Debian's /usr/bin/python3 (python3-apt imports nowhere else); reads a JSON
request on stdin and writes a JSON answer on stdout. Standard library + apt only, on purpose.
The resolver is apt's own (depcache with auto-install), never a hand-written dependency walk.
"""

import email.utils
import json
import os
import sys

import apt
import apt_pkg

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def prepare_root(req):
    root = req["root"]
    for d in (
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "etc/apt/apt.conf.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    open(os.path.join(root, "var/lib/dpkg/status"), "a").close()
    opts = "" if not req.get("snapshot") else " check-valid-until=no"
    with open(os.path.join(root, "etc/apt/sources.list"), "w") as f:
        f.write(
            f"deb [arch={req['arch']} signed-by={KEYRING}{opts}] {req['mirror']} "
            f"{req['suite']} {' '.join(req['components'])}\n"
        )
    with open(os.path.join(root, "etc/apt/apt.conf"), "w") as f:
        f.write(
            f'APT::Architecture "{req["arch"]}";\nAPT::Architectures {{ "{req["arch"]}"; }};\n'
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        )
    return root


def release_epoch(root):
    lists = os.path.join(root, "var/lib/apt/lists")
    for name in sorted(os.listdir(lists)):
        if name.endswith("InRelease") or name.endswith("_Release"):
            with open(os.path.join(lists, name), errors="replace") as f:
                for line in f:
                    if line.startswith("Date:"):
                        return int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
    return None


def record(pkg):
    c = pkg.candidate
    return {
        "name": pkg.shortname,
        "version": c.version,
        "arch": c.architecture,
        "sha256": c.sha256,
        "filename": c.filename,
        "size": c.size,
    }


def main():
    req = json.load(sys.stdin)
    root = prepare_root(req)
    apt_pkg.init_config()
    apt_pkg.read_config_file(apt_pkg.config, os.path.join(root, "etc/apt/apt.conf"))
    cache = apt.Cache(rootdir=root)
    try:
        cache.update(raise_on_error=True)
    except Exception as e:  # apt raises FetchFailedException and friends
        print(
            json.dumps({"fatal": f"cannot update the index of {req['mirror']} {req['suite']}: {e}"})
        )
        return
    cache.open()
    raw, depcache = cache._cache, cache._depcache
    out = {"release_epoch": release_epoch(root), "groups": {}, "errors": [], "moved": []}
    # `lock --update NAME`: every other package keeps its locked version while the index still
    # has it (apt's candidate), so only NAME and what it drags in move.
    for name, version in sorted(req.get("keep", {}).items()):
        if name in raw:
            found = [v for v in raw[name].version_list if v.ver_str == version]
            if found:
                depcache.set_candidate_ver(raw[name], found[0])
            else:
                out["moved"].append(name)
    seen: set[str] = set()
    for group in req["groups"]:
        names = list(group["packages"])
        if group.get("essential"):
            names = sorted(p.name for p in raw.packages if p.essential and p.has_versions) + names
        with cache.actiongroup():
            for name in names:
                if name not in raw or not raw[name].has_versions:
                    providers = (
                        sorted({t[2].parent_pkg.name for t in raw[name].provides_list})
                        if name in raw
                        else []
                    )
                    hint = (
                        f"a virtual package provided by {', '.join(providers)}; name one"
                        if providers
                        else f"not found in {req['suite']} ({', '.join(req['components'])})"
                    )
                    out["errors"].append({"package": name, "group": group["name"], "message": hint})
                    continue
                depcache.mark_install(raw[name], True, True)
        if depcache.broken_count:
            broken = sorted(p.name for p in raw.packages if depcache.is_inst_broken(p))
            out["errors"].append(
                {
                    "package": broken[0] if broken else "?",
                    "group": group["name"],
                    "message": "dependencies cannot be satisfied: " + ", ".join(broken),
                }
            )
        changes = [record(p) for p in cache.get_changes() if p.name not in seen]
        seen.update(p.name for p in cache.get_changes())
        out["groups"][group["name"]] = sorted(changes, key=lambda r: (r["name"], r["arch"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
