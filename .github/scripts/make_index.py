"""Writes a PEP 503 "simple" package index over folders of wheels, one index per variant:

    python make_index.py SITE_DIR VARIANT=WHEEL_DIR [VARIANT=WHEEL_DIR ...]

gives SITE_DIR/whl/VARIANT/index.html, SITE_DIR/whl/VARIANT/lt8/index.html and the wheels beside
the latter, each linked with its sha256, so that `pip install --index-url
https://OWNER.github.io/lt8/whl/VARIANT lt8` finds them (the URL scripts/make_notebooks.py
defines as WHEEL_INDEX). .github/workflows/wheels.yml publishes SITE_DIR on GitHub Pages.
"""

import hashlib
import html
import shutil
import sys
from pathlib import Path


def page(title: str, links: list[tuple[str, str]]) -> str:
    body = "\n".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a><br>' for h, t in links)
    return f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n{body}\n</body></html>\n"


def main(site: str, *variants: str) -> None:
    root = Path(site) / "whl"
    for spec in variants:
        name, _, src = spec.partition("=")
        wheels = sorted(Path(src).glob("lt8-*.whl"))
        if not wheels:
            raise SystemExit(f"no lt8 wheels in {src} (variant {name})")
        pkg = root / name / "lt8"
        pkg.mkdir(parents=True, exist_ok=True)
        links = []
        for w in wheels:
            shutil.copy2(w, pkg / w.name)
            digest = hashlib.sha256(w.read_bytes()).hexdigest()
            links.append((f"{w.name}#sha256={digest}", w.name))
        (pkg / "index.html").write_text(page("Links for lt8", links))
        (root / name / "index.html").write_text(page(f"lt8 wheels ({name})", [("lt8/", "lt8")]))
        print(f"{name}: {len(wheels)} wheels")


if __name__ == "__main__":
    main(*sys.argv[1:])
