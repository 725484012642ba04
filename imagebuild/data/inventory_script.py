"""Run inside an artifact (container or VM) by its own Python: print what is really installed,
as JSON: dpkg's database and the Python distributions of the interpreter running it. With a
JSON argument `{"imports": [dist, ...]}` (verify), also import each distribution's top-level
module and report its version, and list the dynamic linker's cache."""

import importlib
import importlib.metadata as m
import json
import subprocess
import sys

fmt = "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"
deb = subprocess.run(
    ["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True
).stdout
out: dict[str, object] = {
    "deb": [line.split("\t")[1:] for line in deb.splitlines() if line.startswith("ii")],
    "python": sorted([d.metadata["Name"], d.version] for d in m.distributions()),
}


def imported_version(dist: str) -> str:
    try:
        top = (m.distribution(dist).read_text("top_level.txt") or dist).split()[0]
    except m.PackageNotFoundError:
        return "not installed"
    try:
        mod = importlib.import_module(top)
    except Exception as e:  # noqa: BLE001 - the error text is the finding
        return f"import {top} failed: {type(e).__name__}: {e}"
    return f"{top} {getattr(mod, '__version__', '?')}"


if len(sys.argv) > 1:
    want = json.loads(sys.argv[1])
    out["import"] = {d: imported_version(d) for d in want.get("imports", [])}
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    libs: dict[str, str] = {}
    for line in cache.splitlines()[1:]:
        name, _, path = line.strip().partition(" => ")
        libs[name.strip()] = path.strip()
    out["lib"] = libs
print(json.dumps(out))
