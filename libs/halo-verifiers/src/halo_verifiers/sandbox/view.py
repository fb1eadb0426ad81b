"""What a sandboxed program sees of the filesystem (bwrap and unshare build it from the same plan)::

    view = FilesystemView(base_dir, hide=DEFAULT_HIDE, expose=toolchain_dirs)
    view.ops(workspace, view.expose, uid, gid)     # [["symlink", "usr/bin", "/bin"], ["ro", "/usr", "/usr"], …]

The view holds only the system's programs and libraries (:data:`SYSTEM_VIEW`), the few ``/etc``
entries the loader and compilers read (:data:`ETC_VIEW`), a synthetic ``/etc/passwd`` and
``/etc/group``, the exposed toolchain directories (read-only) and the workspace (writable). Hidden
directories (``/tmp``, ``/root``, ``/home``, HALO_HOME…) appear as empty read-only tmpfs, also when
they lie inside an exposed directory.
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from halo_verifiers.sandbox.base import real, under

DEFAULT_HIDE = ("/tmp", "/var/tmp", "/root", "/home", "/run", "/mnt", "/media", "/srv", "/Users")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: What the sandbox sees of the host besides toolchains and its workspace: programs and libraries.
SYSTEM_VIEW = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The /etc entries the dynamic loader, compilers (``cc`` -> /etc/alternatives/cc) and runtimes
#: read. Not passwd/group (synthetic ones replace them), not shadow, hosts, ssl, … (glob patterns).
ETC_VIEW = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime",
            "/etc/nsswitch.conf", "/etc/java-*")


def etc_view() -> list[str]:
    """The :data:`ETC_VIEW` entries that exist here."""
    return sorted({m for pat in ETC_VIEW for m in glob.glob(pat)})


def identity_files(uid: int, gid: int) -> tuple[str, str]:
    """``/etc/passwd`` and ``/etc/group`` for the sandbox: root, nobody and the sandbox's own uid
    (so ``getpwuid`` works for tools that ask), nothing about the host's users."""
    passwd = ("root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    group = "root:x:0:\nnogroup:x:65534:\n"
    if uid not in (0, 65534):
        passwd += f"sandbox:x:{uid}:{gid}:halo sandbox:/nonexistent:/usr/sbin/nologin\n"
    if gid not in (0, 65534):
        group += f"sandbox:x:{gid}:\n"
    return passwd, group


class FilesystemView:
    """The hidden and exposed directories of one sandbox and the plan (:meth:`ops`) of its view.
    ``base_dir`` holds the synthetic passwd/group files (under ``.etc``)."""

    def __init__(self, base_dir: Path, hide: Sequence[str | Path], expose: Sequence[str | Path] = ()) -> None:
        self.base_dir = base_dir
        hidden = sorted({real(h) for h in hide if Path(h).exists()}, key=lambda p: len(p.parts))
        # Only the top-most hidden directories get a tmpfs; nested ones are hidden already — unless
        # an exposed directory brings their parent back (HALO_HOME inside a shown project).
        self.hidden_all: list[Path] = [h for h in hidden if h != Path("/")]
        self.hidden: list[Path] = []
        for h in self.hidden_all:
            if not any(under(h, t) for t in self.hidden):
                self.hidden.append(h)
        # Real paths of the system view (merged /usr: just /usr); exposes inside need no bind.
        self.view_roots: list[Path] = sorted({real(r) for r in SYSTEM_VIEW if os.path.exists(r)})
        self.expose: list[Path] = []
        for e in expose:
            self.add_expose(e)

    def add_expose(self, path: str | Path) -> None:
        """Make ``path`` (a toolchain directory outside the system view, e.g. ``~/.rustup`` or a
        venv) visible read-only in the sandbox."""
        p = real(path)
        if self.needs_bind(p) and p not in self.expose:
            if not any(under(p, e) for e in self.expose):
                self.expose = [e for e in self.expose if not under(e, p)] + [p]

    def needs_bind(self, p: Path) -> bool:
        """Whether ``p`` (a real path) must be bound to be seen: it exists outside the system view
        (or inside a hidden directory). A hidden directory itself is never re-exposed (e.g. a
        script directory in /tmp on sys.path), nor ``/``."""
        if p == Path("/") or p in self.hidden_all or not p.exists():
            return False
        return any(under(p, h) for h in self.hidden) or not any(under(p, r) for r in self.view_roots)

    def identity_paths(self, uid: int, gid: int) -> tuple[Path, Path]:
        """The synthetic passwd/group for ``uid`` (written once under ``base_dir/.etc``)."""
        d = self.base_dir / ".etc"
        paths = (d / f"passwd-{uid}-{gid}", d / f"group-{uid}-{gid}")
        if not all(p.exists() for p in paths):
            d.mkdir(mode=0o711, exist_ok=True)
            for path, text in zip(paths, identity_files(uid, gid), strict=True):
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
                tmp.write_text(text)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
        return paths

    def ops(self, bind: Path, expose: Sequence[Path], uid: int | None, gid: int | None) -> list[list[str]]:
        """The filesystem as operations in order (parents first), for bwrap or ``_launch/nsinit.py``:
        ``["dir", path]``, ``["symlink", target, path]``, ``["tmpfs", path]`` (hidden, read-only),
        ``["ro", source, path]``, ``["rw", source, path]`` (``bind``, the only writable one).
        ``uid``/``gid`` (default: this process's) name the synthetic passwd/group entry."""
        uid = os.getuid() if uid is None else uid
        gid = os.getgid() if gid is None else gid
        ops: list[list[str]] = []
        for root in [*SYSTEM_VIEW, *etc_view()]:
            if os.path.islink(root):
                ops.append(["symlink", os.readlink(root), root])  # merged /usr: /bin -> usr/bin
            elif os.path.exists(root):
                ops.append(["ro", root, root])
        passwd, group = self.identity_paths(uid, gid)
        ops += [["ro", str(passwd), "/etc/passwd"], ["ro", str(group), "/etc/group"]]
        shown = [*expose, bind]
        ops += [["tmpfs", str(h)] for h in self.hidden_all
                if h in self.hidden or any(under(h, e) and h != e for e in shown)]
        ops += [["ro", str(e), str(e)] for e in expose]
        ops.append(["rw", str(bind), str(bind)])
        mounted = [Path(op[-1]) for op in ops if op[0] in ("ro", "rw")]
        targets = {Path(op[-1]) for op in ops}
        dirs: set[Path] = set()
        for t in targets:
            for a in t.parents:
                if a != Path("/") and a not in targets and not any(under(a, m) for m in mounted):
                    dirs.add(a)
        ops += [["dir", str(d)] for d in dirs]
        # Parents before children; at one depth a directory before what goes into it.
        return sorted(ops, key=lambda op: (len(Path(op[-1]).parts), op[0] != "dir"))
