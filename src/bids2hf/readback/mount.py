"""``bids2hf mount SOURCE MOUNTPOINT``: a converted dataset as a read-only BIDS folder (FUSE).

Every BIDS tool (pybids, the BIDS validator, FSL, fMRIPrep) then reads the dataset where it is,
fetching only the bytes it reads: the view is a :class:`~bids2hf.bids_fs.BidsHfFileSystem`, so
each file's sha256 is checked on its first read and a damaged file reads as an I/O error
(``EIO``), never as wrong bytes.

FUSE comes from libfuse 3 (Debian: ``apt-get install fuse3``) through mfusepy
(``pip install 'bids2hf[mount]'``). The mount runs in the foreground; Ctrl-C or SIGTERM
unmounts it cleanly (libfuse handles both signals and unmounts before returning). Where FUSE
cannot work (no binding, no libfuse, no ``/dev/fuse``) the command says so in one line.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from bids2hf.errors import Bids2HfError, DestinationError

__all__ = ["FUSE_DEVICE_ENV", "FuseUnavailableError", "mount"]

log = logging.getLogger(__name__)

#: The device FUSE needs; the environment variable exists so tests can make it "missing".
FUSE_DEVICE_ENV = "BIDS2HF_FUSE_DEVICE"


class FuseUnavailableError(Bids2HfError):
    """FUSE cannot be used on this machine (binding, library or device missing)."""


def _fuse() -> Any:
    """The mfusepy module, or a one-line reason why FUSE is unavailable."""
    device = os.environ.get(FUSE_DEVICE_ENV, "/dev/fuse")
    if not os.path.exists(device):
        raise FuseUnavailableError(
            f"{device}: missing, so FUSE is unavailable here; on Linux install fuse3 "
            "(apt-get install fuse3), in a container add --device /dev/fuse --cap-add SYS_ADMIN; "
            "or use `bids2hf export` instead"
        )
    try:
        import mfusepy
    except ImportError:
        raise FuseUnavailableError(
            "mfusepy is not installed: pip install 'bids2hf[mount]' (and the fuse3 system package)"
        ) from None
    except OSError as exc:  # mfusepy loads libfuse when imported
        raise FuseUnavailableError(
            f"libfuse not found ({exc}): install the fuse3 system package (apt-get install fuse3)"
        ) from None
    return mfusepy


# long because: one class of FUSE callbacks, defined here since it subclasses the lazily imported mfusepy
def _operations(fs: Any, fuse: Any) -> Any:
    """FUSE callbacks over a BidsHfFileSystem (read-only)."""
    from bids2hf.model.ranges import RangeError

    class Operations(fuse.Operations):
        use_ns = True  # timestamps in nanoseconds (mfusepy's float seconds are deprecated)

        def __init__(self) -> None:
            # Attribute names start with "_": mfusepy registers any attribute named like a FUSE
            # operation (``lock``, ``flush``, ...) as that operation.
            self._now = time.time_ns()
            self._uid, self._gid = os.getuid(), os.getgid()
            self._handles: dict[int, tuple[Any, threading.Lock]] = {}
            self._next_handle = 1
            self._guard = threading.Lock()
            #: Set once libfuse has mounted the folder and starts serving it.
            self.started = threading.Event()

        def init(self, path: str) -> None:
            self.started.set()

        def _info(self, path: str) -> dict[str, Any]:
            try:
                return dict(fs.info(path.strip("/")))
            except FileNotFoundError:
                raise fuse.FuseOSError(errno.ENOENT) from None

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            info = self._info(path)
            directory = info["type"] == "directory"
            return {
                "st_mode": (stat.S_IFDIR | 0o555) if directory else (stat.S_IFREG | 0o444),
                "st_nlink": 2 if directory else 1,
                "st_size": 0 if directory else int(info["size"]),
                "st_uid": self._uid,
                "st_gid": self._gid,
                "st_atime": self._now,
                "st_mtime": self._now,
                "st_ctime": self._now,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            try:
                names = fs.ls(path.strip("/"), detail=False)
            except FileNotFoundError:
                raise fuse.FuseOSError(errno.ENOENT) from None
            return [".", "..", *(n.rsplit("/", 1)[-1] for n in names)]

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
                raise fuse.FuseOSError(errno.EROFS)
            try:
                f = fs.open(path.strip("/"), "rb")
            except FileNotFoundError:
                raise fuse.FuseOSError(errno.ENOENT) from None
            except IsADirectoryError:
                raise fuse.FuseOSError(errno.EISDIR) from None
            with self._guard:
                handle = self._next_handle
                self._next_handle += 1
                self._handles[handle] = (f, threading.Lock())
            return handle

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            f, lock = self._handles[fh]
            try:
                with lock:
                    f.seek(offset)
                    return bytes(f.read(size))
            except RangeError as exc:
                log.error("%s", exc)  # the reader gets EIO: wrong bytes are never returned
                raise fuse.FuseOSError(errno.EIO) from None
            except OSError as exc:
                log.error("%s: %s", path, exc)
                raise fuse.FuseOSError(errno.EIO) from None

        def release(self, path: str, fh: int) -> int:
            with self._guard:
                f, _ = self._handles.pop(fh, (None, None))
            if f is not None:
                f.close()
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    return Operations()


def mount(
    source: str,
    mountpoint: str | os.PathLike[str],
    *,
    verify: bool = True,
    target_options: dict[str, Any] | None = None,
    threads: bool = True,
) -> None:
    """Mount the BIDS tree of ``source`` read-only at ``mountpoint``; return once unmounted.

    Blocks in the foreground until the mount ends (Ctrl-C, SIGTERM, ``fusermount3 -u``).

    Args:
        source: a local output, ``hf://datasets/ORG/NAME[@REV]`` or an fsspec URL.
        mountpoint: an existing empty folder.
        verify: check each file's sha256 on its first read (see :mod:`bids2hf.bids_fs`).
        target_options: options of the filesystem holding ``source``.
        threads: let FUSE serve several requests at once.

    Raises:
        FuseUnavailableError: FUSE cannot be used here (binding, libfuse or /dev/fuse missing).
        DestinationError: ``mountpoint`` is not an empty folder.
        InputError: ``source`` is not a bids2hf dataset (checked before mounting).
    """
    point = Path(mountpoint)
    if not point.is_dir():
        raise DestinationError(f"{point}: not a folder; create an empty folder to mount on")
    if os.path.ismount(point) or any(point.iterdir()):
        raise DestinationError(f"{point}: not empty (or already a mount point); choose an empty folder")
    fuse = _fuse()
    from bids2hf.readback.bids_fs import BidsHfFileSystem

    fs = BidsHfFileSystem(
        source, target_options=target_options, verify=verify, skip_instance_cache=True
    )
    fs.ls("")  # read the index now: a bad source is reported before anything is mounted
    operations = _operations(fs, fuse)
    try:
        fuse.FUSE(
            operations,
            str(point),
            foreground=True,
            nothreads=not threads,
            ro=True,
            fsname=f"bids2hf:{source}",
            subtype="bids2hf",
        )
    except RuntimeError as exc:
        # libfuse's main loop returns non-zero after a signal, once it has unmounted. It is an
        # error only if the folder never got mounted, or is still mounted.
        if not operations.started.is_set():
            raise FuseUnavailableError(
                f"{point}: could not mount (libfuse error {exc}; its message is above); "
                "non-root users need fusermount3 from the fuse3 package"
            ) from None
        if os.path.ismount(point):
            raise FuseUnavailableError(f"{point}: FUSE stopped with error {exc}") from None
        log.debug("FUSE loop ended (%s) and %s is unmounted", exc, point)
