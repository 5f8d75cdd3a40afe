"""Small, private filesystems to fill up: a mount namespace of its own in which /dev/shm (and a
folder for a record) are small tmpfs, so a fault that fills them to the last byte touches nothing
else on the machine (the real /dev/shm is shared by every process and backed by RAM).

A holder process keeps the namespace alive; programs run inside it through `nsenter`, and this
process reaches its files through `/proc/<holder>/root`. Needs root, unshare(1) and nsenter(1)
(util-linux); `PrivateMounts` raises `PermissionError` with the reason where they are missing.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess


class PrivateMounts:
    def __init__(self, shm_bytes: int, disk_dir: str | None = None, disk_bytes: int = 0):
        """/dev/shm of `shm_bytes`; with `disk_dir` (an existing folder), a tmpfs of `disk_bytes`
        on it too. Seen only from inside (`prefix`) or through `path`."""
        if os.geteuid() != 0:
            raise PermissionError("mounting a private tmpfs needs root")
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            raise PermissionError("unshare and nsenter (util-linux) are not installed")
        script = f"mount -t tmpfs -o size={shm_bytes},mode=1777 tmpfs /dev/shm"
        if disk_dir:
            script += f" && mount -t tmpfs -o size={disk_bytes},mode=0755 tmpfs {shlex.quote(disk_dir)}"
        script += " && echo ready && exec cat >/dev/null"  # lives until our end of its stdin closes
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "ready":
            err = self.holder.communicate(timeout=10)[1].strip()
            raise PermissionError(f"cannot make a private mount namespace: {err}")

    def prefix(self, cwd: str = "/") -> list[str]:
        """The command prefix that runs a program inside the namespace, in `cwd`."""
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--wd={cwd}", "--"]

    def path(self, inside: str) -> str:
        """Where a path inside the namespace is seen from here."""
        return f"/proc/{self.holder.pid}/root{inside}"

    def close(self) -> None:
        """The namespace, and its filesystems, go when the holder and every program in it end."""
        if self.holder.poll() is None:
            self.holder.stdin.close()
            self.holder.wait(timeout=10)

    def __enter__(self) -> "PrivateMounts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(folder: str, leave: int = 0, name: str = "fill") -> str:
    """Reserve all but `leave` bytes of the filesystem of `folder` in one file (fallocate);
    returns its path: remove it to free the space."""
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        size = free_bytes(folder) - leave
        while size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
                break
            except OSError as e:  # the free figure is rounded: step down a page at a time
                if e.errno != errno.ENOSPC:
                    raise
                size -= 4096
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path
