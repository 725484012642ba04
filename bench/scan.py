"""What the CVE gate costs: `invoke scan` of the example's lock against OSV exports of
realistic size. OSV's own exports cannot be downloaded here, so records in their shape are made:
Debian-like ones (one per CVE, a Debian:12 entry with an ECOSYSTEM range and a fixed version,
half of them naming a source package the lock has) and PyPI-like ones (a listed `versions`
array of 40 entries, as PYSEC records carry), plus the real records of tests/data/osv.

    python bench/scan.py [--records N,N,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, table, timed  # noqa: E402

sys.path.insert(0, str(ROOT))
from imagebuild import lock as locking  # noqa: E402
from imagebuild import scan  # noqa: E402

EXAMPLE = ROOT / "examples" / "onnx-serve" / "imagebuild.yaml"


def export(out: Path, n: int, sources: list[str], wheels: list[str]) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((ROOT / "tests" / "data" / "osv").glob("*/*.json")):
            zf.write(f, f.name)
        for i in range(n):
            pypi = i % 4 == 0
            names = wheels if pypi else sources
            name = names[i % len(names)] if i % 2 else f"not-installed-{i}"
            affected = {
                "package": {"ecosystem": "PyPI" if pypi else "Debian:12", "name": name},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": f"0.{i}"}]}
                ],
            }
            if pypi:
                affected["versions"] = [f"0.{k}" for k in range(40)]
            rec = {
                "id": f"BENCH-{i}",
                "modified": "2026-12-01T00:00:00Z",
                "details": "x" * 400,
                "affected": [affected],
            }
            zf.writestr(f"BENCH-{i}.json", json.dumps(rec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="1000,20000,60000")
    counts = [int(n) for n in ap.parse_args().records.split(",")]
    lk = locking.read(EXAMPLE.with_suffix(".lock"))
    found = scan.installed(lk)
    sources = [i.name for i in found if i.ecosystem != scan.PYPI]
    wheels = [i.name for i in found if i.ecosystem == scan.PYPI]
    rows = []
    with tempfile.TemporaryDirectory(prefix="imagebuild-bench-scan-") as tmp:
        for n in counts:
            db = export(Path(tmp) / f"all-{n}.zip", n, sources, wheels)
            start = time.monotonic()
            report = scan.run(lk, [db], 0)
            inside = time.monotonic() - start
            seconds, r = timed("scan", "--spec", str(EXAMPLE), "--db", str(db), "--max-db-age", "0")
            size = db.stat().st_size / 1e6
            rows.append(
                (
                    f"{n} records ({size:.1f} MB zip), {len(report.findings)} findings",
                    f"load + match {inside:.2f} s; `invoke scan` {seconds:.2f} s",
                    "",
                )
            )
    table(rows, last="", value="seconds")


if __name__ == "__main__":
    main()
