"""Fetch a dataset archive over HTTP(S), check its md5, and unpack it without leaving the target."""
import hashlib
import http.client
import os
import tarfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .base import DataError

CHUNK = 1 << 20
TIMEOUT_S = 60
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def md5sum(path: Path) -> str:
    """Hex md5 digest of the file at ``path``."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, manual: str) -> None:
    """Download ``url`` to ``dest`` with a progress bar, through ``dest`` + ".part" so an
    interrupted download never looks complete. A network failure raises ``DataError``; ``manual``
    completes its last sentence, "Check the connection and retry, or ...", with how to get the data
    by hand."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {dest.name}") as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:
        part.unlink(missing_ok=True)
        raise DataError(
            f"Could not download {url} ({err}). Check the connection and retry, or {manual}."
        ) from err
    os.replace(part, dest)


def download_archive(url: str, md5: str, dest_dir: Path, manual: str) -> None:
    """Make sure ``dest_dir`` holds the archive at ``url`` with digest ``md5`` (reusing a verified
    earlier download), then extract it into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / url.rsplit("/", 1)[-1]
    if not (archive.is_file() and md5sum(archive) == md5):
        fetch(url, archive, manual)
        digest = md5sum(archive)
        if digest != md5:
            archive.unlink()
            raise DataError(
                f"The download of {url} is damaged (md5 {digest}, expected {md5}); it was deleted. "
                f"Retry, or {manual}."
            )
    extract_tar(archive, dest_dir)


def extract_tar(archive: Path, dest_dir: Path) -> None:
    """Extract the tar archive (any compression) into ``dest_dir``, refusing links, devices and
    members whose path would land outside ``dest_dir``."""
    root = dest_dir.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                target = (root / member.name).resolve()
                if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
                    raise DataError(
                        f"Refusing to extract {archive}: its member {member.name!r} is not a plain "
                        f"file or folder inside {dest_dir}. Delete the archive and download it again."
                    )
            tar.extractall(root, members=members, **_DATA_FILTER)
    except (tarfile.TarError, OSError) as err:
        raise DataError(
            f"Could not extract {archive} ({err}). Delete it and download it again."
        ) from err
