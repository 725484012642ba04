"""Run inside an artifact (container or VM) by its own Python: print what is really installed,
dpkg's database and the Python distributions of the interpreter running it, as JSON."""

import importlib.metadata as m
import json
import subprocess

fmt = "${Package}\t${Version}\t${Architecture}\n"
deb = subprocess.run(
    ["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True
).stdout
print(
    json.dumps(
        {
            "deb": [line.split("\t") for line in deb.splitlines()],
            "python": sorted([d.metadata["Name"], d.version] for d in m.distributions()),
        }
    )
)
