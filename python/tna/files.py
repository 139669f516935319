"""Files written so that a run killed at any moment leaves either the previous version or the new one."""
import os
from pathlib import Path


def write_atomically(path, write) -> None:
    """Call ``write(file)`` on a temporary binary file next to ``path``, flush it to disk, then rename it over
    ``path``. On an error the temporary file is removed and the error propagates."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
