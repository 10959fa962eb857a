"""Refresh tasks/data_docs_assets/ (the CDN assets of Great Expectations' Data Docs, shipped so the docs render
offline) from the npm registry with `npm pack`: every file of `tasks.data_docs.ASSETS`, plus each package's
license and a NOTICE listing them. Run it after a Great Expectations upgrade changes the templates' URLs:

    .venv/bin/python scripts/vendor_data_docs_assets.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data_docs import ASSETS, ASSETS_DIR  # noqa: E402

LICENSES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")


def main() -> int:
    packages = sorted({a.package for a in ASSETS})
    if ASSETS_DIR.exists():
        shutil.rmtree(ASSETS_DIR)
    notice = ["# Vendored Data Docs assets", "",
              "Copied unchanged from the npm registry by scripts/vendor_data_docs_assets.py; each package's license",
              "is beside its files.", "", "| package | version | license |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in packages:
            out = subprocess.run(["npm", "pack", spec, "--json"], cwd=tmp, check=True, capture_output=True, text=True)
            tgz = Path(tmp) / json.loads(out.stdout)[0]["filename"]
            unpacked = Path(tmp) / tgz.stem
            with tarfile.open(tgz) as tar:
                tar.extractall(unpacked, filter="data")
            root = unpacked / "package"
            meta = json.loads((root / "package.json").read_text())
            assets = [a for a in ASSETS if a.package == spec]
            for a in assets:
                dest = ASSETS_DIR / a.local
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / a.path, dest)
            name = assets[0].local.split("/", 1)[0]
            for lic in LICENSES:
                if (root / lic).exists():
                    shutil.copyfile(root / lic, ASSETS_DIR / name / lic)
                    break
            else:
                (ASSETS_DIR / name / "LICENSE").write_text(f"{meta['name']} {meta['version']}: {meta.get('license')} "
                                                          f"(package.json; the package ships no license file)\n")
            notice.append(f"| {meta['name']} | {meta['version']} | {meta.get('license')} |")
    (ASSETS_DIR / "NOTICE.md").write_text("\n".join(notice) + "\n")
    print(f"{sum(1 for p in ASSETS_DIR.rglob('*') if p.is_file())} files in {ASSETS_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
