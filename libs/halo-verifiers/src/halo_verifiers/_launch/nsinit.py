"""Init for the ``unshare`` sandbox mechanism: build the filesystem view, drop privileges, exec.

Runs as (namespace) root inside fresh mount/PID/network namespaces made by ``unshare``; imports
nothing from Halo Forge (``python -I -S nsinit.py SPEC_JSON``). It builds what bubblewrap builds
for the ``bwrap`` mechanism, from the same list of operations (``Sandbox.view``):

1. make every mount private, so nothing propagates back to the host;
2. keep O_PATH handles on every bind source (the workspace, the system directories, toolchains,
   the synthetic passwd/group) and on the few device nodes;
3. mount an empty tmpfs as the new root (on a staging directory) and replay the operations in it:
   directories, symlinks (``/bin -> usr/bin``), read-only tmpfs for hidden directories, binds from
   the handles; add a minimal ``/dev`` and the namespace's ``/proc``;
4. ``pivot_root`` into it and detach the old root: nothing else of the host is reachable;
5. remount every mount read-only except the workspace and /proc;
6. fork: the child drops to the sandbox uid/gid (no supplementary groups, no_new_privs) and execs
   the command; this init stays PID 1, reaps orphans and exits with the command's status
   (128 + N for a signal), which makes the kernel kill whatever else is left in the namespace.
"""

import ctypes
import json
import os
import stat
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
PR_SET_NO_NEW_PRIVS = 38
MNT_DETACH = 2
# pivot_root has no libc wrapper: syscall numbers per architecture.
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203,
                  "ppc64": 203, "s390x": 217, "i386": 217, "i686": 217, "armv7l": 218, "armv6l": 218}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_FLAG_OPTS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

libc = ctypes.CDLL(None, use_errno=True)  # libc is already loaded; find_library would spawn ldconfig
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def unescape(path):
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            out.append((unescape(parts[4]), parts[5]))
    return out


def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def pivot_root(new_root):
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(0, f"pivot_root: unknown architecture {os.uname().machine}")
    os.chdir(new_root)
    if libc.syscall(nr, b".", b".") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    # The old root now lies on top of the new one at "/": detach it, leaving only the new root.
    if libc.umount2(b".", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount old root: {os.strerror(err)}")
    os.chdir("/")


def build_root(ops, stage):
    """Replay ``ops`` (see Sandbox.view) in a fresh tmpfs mounted on ``stage``."""
    handles = {}
    for i, op in enumerate(ops):
        if op[0] in ("ro", "rw"):
            handles[i] = os.open(op[1], os.O_PATH)
    devs = {d: os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES if os.path.exists(f"/dev/{d}")}
    proc = os.open("/proc", os.O_PATH)
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")

    def at(path):
        return stage + path

    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "dir":
            os.makedirs(at(op[1]), mode=0o755, exist_ok=True)
            os.chmod(at(op[1]), 0o755)
        elif kind == "symlink":
            os.symlink(op[1], at(op[2]))
        elif kind == "tmpfs":
            os.makedirs(at(op[1]), mode=0o755, exist_ok=True)
            mount("tmpfs", at(op[1]), "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
        else:
            fd, dest = handles[i], at(op[2])
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(dest, mode=0o755, exist_ok=True)
            else:
                open(dest, "a").close()
            mount(f"/proc/self/fd/{fd}", dest, None, MS_BIND | MS_REC)
            os.close(fd)
    os.makedirs(at("/dev"), mode=0o755)
    mount("tmpfs", at("/dev"), "tmpfs", MS_NOSUID, "mode=755,size=64k")
    for name, fd in devs.items():
        open(at(f"/dev/{name}"), "a").close()
        mount(f"/proc/self/fd/{fd}", at(f"/dev/{name}"), None, MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, at(f"/dev/{name}"))
    os.mkdir(at("/dev/shm"), 0o755)
    os.makedirs(at("/proc"), mode=0o755)
    mount(f"/proc/self/fd/{proc}", at("/proc"), None, MS_BIND | MS_REC)
    os.close(proc)


def main(spec):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Any existing directory serves as the staging mount point (it is covered, not changed).
    stage = next(d for d in ("/mnt", "/tmp", "/var/tmp", "/media", "/srv", "/opt", "/home", "/root")
                 if os.path.isdir(d) and not os.path.islink(d))
    build_root(spec["ops"], stage)
    pivot_root(stage)
    work = spec["workdir"]
    planned = {op[-1] for op in spec["ops"] if op[0] != "dir"}
    for target, opts in mounts():
        if under(target, work) or under(target, "/proc"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts.split(","):
            flags |= _FLAG_OPTS.get(o, 0)
        try:
            mount(None, target, None, flags)
        except OSError:
            # Locked mounts (flags inherited from the host): fall back to the known flags only.
            try:
                mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            except OSError:
                if target == "/" or target in planned:
                    raise  # a mount of the view itself must be read-only (submounts of binds may be locked)
    os.chdir(spec["cwd"])
    # Stay PID 1 of the namespace: the kernel ignores default-action signals sent to PID 1 from
    # inside it, so the command must not be PID 1 (a self-inflicted SIGSEGV would be ignored).
    child = os.fork()
    if child == 0:
        try:
            if spec.get("uid") is not None:
                os.setgroups([])
                os.setgid(spec["gid"])
                os.setuid(spec["uid"])
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            argv = spec["argv"]
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"halo sandbox: cannot exec {spec['argv'][0]}: {exc}", file=sys.stderr)
        os._exit(127)
    while True:  # reap orphans until the command itself ends; exiting then kills the rest
        pid, status = os.wait()
        if pid == child:
            if os.WIFSIGNALED(status):
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except OSError as exc:
        print(f"halo sandbox init failed: {exc}", file=sys.stderr)
        sys.exit(126)
