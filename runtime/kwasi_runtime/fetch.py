"""`kwasi-runtime fetch`: download a module or model once, verified against its sha256.

Used by the operator's init containers for `url` + `sha256` sources; a file already present with the
right digest is kept, so restarts do not download again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


class FetchError(Exception):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, sha256: str, dest: Path, timeout_s: float = 60.0) -> bool:
    """Downloads `url` to `dest` unless it is already there with this digest. Returns True if it downloaded.
    The file appears only complete and verified (written beside it, then renamed)."""
    expected = sha256.lower()
    if dest.is_file() and sha256_of(dest) == expected:
        return False
    if not url.startswith(("https://", "http://", "file://")):
        raise FetchError(f"unsupported URL scheme: {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise FetchError(f"{url}: sha256 is {digest.hexdigest()}, expected {expected}")
        shutil.move(tmp, dest)
    except OSError as e:
        raise FetchError(f"{url}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True
