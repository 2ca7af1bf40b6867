"""Atomic, checksummed file output: a file is either complete or absent.

Every file a stage writes goes through ``atomic_write``: the bytes go to a temporary file
in the same directory (``.<name>.XXXXXXXX.tmp``), which is flushed, fsynced and renamed
over the destination; the directory is fsynced after the rename. A process killed at
any moment leaves either the complete old state or the complete new file, plus at most
a stale temporary file, which the next write of the same destination removes.

Checkpoints (and prepared data, see ``data.py``) carry a manifest ``<file>.json`` with
the file's SHA-256 and size; ``verify_manifest`` checks it before the file is loaded.

Fault injection (tests only): with ``SHORTRUN_OT_FAULT="<path suffix>:<point>[:group]"``
in the environment, the process writing a destination whose path ends with
``<path suffix>`` (e.g. ``it0002/checkpoint.pt``) sends SIGKILL to itself, or with
``:group`` to its whole process group (the stage and the Snakemake that started it, as a
cluster pre-emption would), at ``<point>``: ``partial`` (half of the bytes are in the
temporary file), ``before-rename`` (the temporary file is complete) or ``after-rename``
(the destination is complete; later outputs of the stage are not written).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

FAULT_ENV = "SHORTRUN_OT_FAULT"
FAULT_POINTS = ("partial", "before-rename", "after-rename")


def _fault(path: Path, point: str, fileobj=None) -> None:
    """The fault-injection hook described in the module docstring (a no-op unless the variable is set)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    suffix, _, rest = spec.partition(":")
    wanted, _, target = rest.partition(":")
    if wanted not in FAULT_POINTS or target not in ("", "group"):
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected '<path suffix>:<{'|'.join(FAULT_POINTS)}>[:group]'")
    if wanted != point or not path.as_posix().endswith(suffix):
        return
    if fileobj is not None:  # "partial": leave half of the bytes in the temporary file
        fileobj.truncate(fileobj.tell() // 2)
        fileobj.flush()
        os.fsync(fileobj.fileno())
    if target == "group":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed writer of ``path`` left behind (only one job writes a given path)."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]{8}\.tmp")
    for candidate in path.parent.iterdir():
        if pattern.fullmatch(candidate.name):
            candidate.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _fault(path, "partial", f)
            os.fsync(f.fileno())
        _fault(path, "before-rename")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    _fault(path, "after-rename")
    return path


def save_tensors(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    import torch  # imported here so that the JSON/text writers work without torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def load_tensors(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load`` with a clear error for a missing or truncated file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, ...
        raise ValueError(f"{what} {path} is corrupt or truncated ({exc}); delete it and rerun the workflow") from exc


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """``json.loads`` of a file with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc}); delete it and rerun the workflow") from None


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (sorted keys, trailing newline)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- manifests


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest of a file: ``foo.pt`` -> ``foo.pt.json``."""
    return Path(f"{path}.json")


def write_manifest(path: str | os.PathLike, **fields) -> dict:
    """Record the SHA-256 and size of the (complete) file ``path`` in its manifest, plus ``fields``."""
    path = Path(path)
    manifest = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, **fields}
    save_json(manifest, manifest_path(path))
    return manifest


def verify_manifest(path: str | os.PathLike, what: str, remedy: str) -> dict:
    """Check ``path`` against its manifest (size, then SHA-256); return the manifest.

    Raises FileNotFoundError when ``path`` is missing and ValueError naming both files and
    ``remedy`` when the manifest is missing or unreadable, or the file does not match it.
    """
    path, manifest_file = Path(path), manifest_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; {remedy}")
    if not manifest_file.is_file():
        raise ValueError(f"{what} {path} has no manifest {manifest_file}; {remedy}")
    try:
        manifest = json.loads(manifest_file.read_text())
        expected_sha, expected_size = manifest["sha256"], manifest.get("bytes")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"manifest {manifest_file} is unreadable or lacks 'sha256' ({exc}); {remedy}") from exc
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ValueError(
            f"{what} {path} has {size} bytes but its manifest {manifest_file} records {expected_size} "
            f"(truncated or overwritten); {remedy}"
        )
    if sha256(path) != expected_sha:
        raise ValueError(f"{what} {path} does not match the SHA-256 in its manifest {manifest_file}; {remedy}")
    return manifest
