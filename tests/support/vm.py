"""A throwaway Linux guest with cgroup v2 alone, for tests of what this host's kernel is not set up for.

qemu boots the Debian kernel that ``.ci/services.sh`` unpacks under ``.devart/vm/kernel`` (never
installed on this host) with an initramfs built here: a static busybox, the kernel's virtio and 9p
modules and ``_INIT``. The guest sees this host's root filesystem read-only over 9p, so it has the
same Python, virtualenv, checkout and bubblewrap, and one writable 9p share at ``GUEST_SHARE`` for
what it reports. Its init mounts proc, sys, devtmpfs, a tmpfs on ``/tmp`` and ``/run``, and cgroup2
alone on ``/sys/fs/cgroup`` (the kernel is booted with ``cgroup_no_v1=all``) with ``memory pids
cpu`` enabled for the root's children, then switches to the host's root, runs the command there
and powers off.

The guest is emulated (TCG), not run under KVM: the development VM's ``/dev/kvm`` is KVM-PVM, a
nested hypervisor for paravirtualised guests, under which this unmodified kernel had not finished
decompressing itself after five minutes (see docs/sandbox.md).
"""

from __future__ import annotations

import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

KERNEL_DIR = Path(__file__).resolve().parents[2] / ".devart" / "vm" / "kernel"
GUEST_SHARE = PurePosixPath("/tmp/devart-vm")
"""Where the guest sees the writable share (the host's ``GuestRun.share``)."""
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BUSYBOX = Path("/bin/busybox")
_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
_MSIZE = 512 * 1024
_BOOTED = re.compile(r"^devart-vm: booted in ([\d.]+) s$", re.MULTILINE)
_EXITED = re.compile(r"^devart-vm: exit (\d+) after ([\d.]+) s$", re.MULTILINE)

_IN_HOST_ROOT = f"""sh {GUEST_SHARE}/command.sh
echo "devart-vm: exit $? after $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
/bin/busybox poweroff -f
"""
"""Then PID 1 in the host's root (its busybox is the one the initramfs has)."""
_INIT = f"""#!/bin/busybox sh
set -e
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for module in /modules/*.ko; do insmod "$module"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize={_MSIZE},ro,cache=loose hostroot /host
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs -o mode=1777 tmp /host/tmp
mount -t tmpfs -o mode=755 run /host/run
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
echo "+memory +pids +cpu" > /host/sys/fs/cgroup/cgroup.subtree_control
mkdir /host{GUEST_SHARE}
mount -t 9p -o trans=virtio,version=9p2000.L,msize={_MSIZE} share /host{GUEST_SHARE}
echo "devart-vm: booted in $(cut -d' ' -f1 /proc/uptime) s"
exec switch_root /host /bin/busybox sh -c {shlex.quote(_IN_HOST_ROOT)}
"""
"""PID 1 of the guest. Under ``set -e`` a failed step ends PID 1: the kernel panics, ``panic=-1``
reboots and ``-no-reboot`` makes qemu exit, with no ``exit`` line on the console. ``switch_root``
rather than ``chroot``: a chrooted process may not create user namespaces (a non-root bubblewrap)."""


class GuestUnavailable(Exception):
    """qemu, the static busybox or the unpacked kernel is missing, or qemu refused to start: the message says which."""


@dataclass(frozen=True)
class GuestRun:
    share: Path
    console: str
    exit_code: int | None
    """The command's exit code; ``None`` when the guest stopped before it ended (see ``console``)."""
    boot_s: float | None
    """Guest uptime when the command started."""
    guest_s: float | None
    """Guest uptime when the command ended."""
    wall_s: float
    """From starting qemu to its exit, on this host."""


def _modinfo(ko: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` ELF section."""
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + index * shentsize)
        return name, offset, size

    _, names, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if ko[names + name : ko.index(b"\0", names + name)] == b".modinfo":
            entries = ko[offset : offset + size].decode(errors="replace").split("\0")
            return dict(entry.split("=", 1) for entry in entries if "=" in entry)
    return {}


def _load_order(modules_dir: Path, wanted: Sequence[str]) -> list[Path]:
    """The ``.ko`` files of ``wanted`` and what they depend on, each after its dependencies."""
    by_name = {path.name.removesuffix(".ko").replace("-", "_"): path for path in modules_dir.rglob("*.ko")}
    order: list[Path] = []

    def add(name: str) -> None:
        path = by_name[name]
        if path in order:
            return
        for dependency in filter(None, _modinfo(path.read_bytes()).get("depends", "").split(",")):
            add(dependency)
        order.append(path)

    for name in wanted:
        add(name)
    return order


def _cpio(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` archive (the initramfs format) of (path, mode, content) entries."""
    archive = bytearray()
    for inode, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        archive += b"070701" + "".join(f"{field:08x}" for field in fields).encode() + encoded
        archive += b"\0" * (-len(archive) % 4) + data
        archive += b"\0" * (-len(archive) % 4)
    return bytes(archive)


def _kernel() -> tuple[Path, Path]:
    """The unpacked kernel as an ELF ``vmlinux`` (made once from the image), and its modules directory.

    qemu boots an ELF kernel straight into its PVH entry point: emulated, the image's own
    decompressor took longer than the whole boot after it.
    """
    images = sorted((KERNEL_DIR / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise GuestUnavailable(
            f"no kernel unpacked under {KERNEL_DIR} (found {len(images)}): run `make services` (.ci/services.sh)"
        )
    version = images[0].name.removeprefix("vmlinuz-")
    vmlinux = KERNEL_DIR / f"vmlinux-{version}"
    if not vmlinux.exists():
        image = images[0].read_bytes()
        start = image.find(_XZ_MAGIC)
        if start < 0:
            raise GuestUnavailable(f"{images[0]} holds no xz-compressed kernel")
        partial = vmlinux.parent / f"{vmlinux.name}.{os.getpid()}.partial"  # two test runs may make it at once
        partial.write_bytes(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(image[start:]))
        partial.rename(vmlinux)
    return vmlinux, KERNEL_DIR / "lib" / "modules" / version / "kernel"


def _initramfs(modules_dir: Path) -> bytes:
    entries = [(name, 0o40755, b"") for name in ("bin", "dev", "host", "modules", "proc", "sys")]
    entries.append(("init", 0o100755, _INIT.encode()))
    entries.append(("bin/busybox", 0o100755, _BUSYBOX.read_bytes()))
    for index, module in enumerate(_load_order(modules_dir, _MODULES)):
        entries.append((f"modules/{index:02d}-{module.name}", 0o100644, module.read_bytes()))
    return _cpio(entries)


def run_in_guest(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], workdir: Path, timeout_s: float, cpus: int = 2
) -> GuestRun:
    """Boot a guest, run ``argv`` in ``cwd`` (as root, with exactly ``env``) and wait for it to power off.

    ``workdir`` receives the initramfs, the console log and the share (``GUEST_SHARE`` in the guest).
    """
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None or not _BUSYBOX.is_file():
        raise GuestUnavailable("qemu-system-x86_64 or /bin/busybox is missing: run `make services` (.ci/services.sh)")
    vmlinux, modules_dir = _kernel()
    share = workdir / "share"
    share.mkdir(parents=True)
    initramfs, console = workdir / "initramfs.cpio", workdir / "console.log"
    initramfs.write_bytes(_initramfs(modules_dir))
    variables = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
    command = shlex.join(argv)
    (share / "command.sh").write_text(f"cd {shlex.quote(str(cwd))} && exec /usr/bin/env -i {variables} {command}\n")
    started = time.monotonic()
    qemu_argv = [
        qemu, "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{console}",
        "-kernel", str(vmlinux), "-initrd", str(initramfs),
        "-append", "console=ttyS0 quiet panic=-1 cgroup_no_v1=all",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none",
    ]  # fmt: skip
    try:
        done = subprocess.run(qemu_argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        pass  # the console shows how far it got
    else:
        if done.returncode != 0:
            raise GuestUnavailable(f"qemu exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    wall_s = time.monotonic() - started
    text = console.read_text(errors="replace") if console.exists() else ""
    booted, exited = _BOOTED.search(text), _EXITED.search(text)
    return GuestRun(
        share=share,
        console=text,
        exit_code=int(exited.group(1)) if exited else None,
        boot_s=float(booted.group(1)) if booted else None,
        guest_s=float(exited.group(2)) if exited else None,
        wall_s=wall_s,
    )
