"""Local model files: where bundled packages keep them, and fingerprints that identify them."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

_LARGE_FILE = 64 << 20  # bytes; larger files are fingerprinted by size + first and last 4 MB
_EDGE = 4 << 20


def package_dir(package: str, *parts: str) -> Path | None:
    """A folder inside an installed package, without importing it (some bundled-model packages
    import dependencies we install without)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0], *parts)


def fingerprint(path: Path) -> str:
    """SHA-256 over a file, or over a folder's files: names, sizes, contents (head + tail of large ones)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts)
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            if size <= _LARGE_FILE:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE))
                handle.seek(-_EDGE, 2)
                digest.update(handle.read())
    return digest.hexdigest()
