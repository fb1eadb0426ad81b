"""Init for the ``unshare`` sandbox mechanism: build the filesystem view, drop privileges, exec.

Runs as (namespace) root inside fresh mount/PID/network namespaces made by ``unshare``; imports
nothing from Halo Forge (``python -I -S nsinit.py SPEC_JSON``). It reproduces what bubblewrap
does for the ``bwrap`` mechanism:

1. make every mount private, so nothing propagates back to the host;
2. keep O_PATH handles on the workspace and on toolchain directories that are about to be hidden;
3. mount an empty tmpfs on each hidden directory (/tmp, /root, /home…), recreate the parent
   directories of the workspace and the exposed paths inside it, and bind them back via the handles;
4. remount every mount read-only except the workspace and /proc;
5. fork: the child drops to the sandbox uid/gid (no supplementary groups, no_new_privs) and execs
   the command; this init stays PID 1, reaps orphans and exits with the command's status
   (128 + N for a signal), which makes the kernel kill whatever else is left in the namespace.
"""

import ctypes
import json
import os
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


def main(spec):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = {}
    for p in [*spec["expose"], spec["workdir"]]:
        keep[p] = os.open(p, os.O_PATH)
    for h in spec["hide"]:
        mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for d in spec["mkdirs"]:
        os.makedirs(d, mode=0o755, exist_ok=True)
        os.chmod(d, 0o755)
    for p, fd in keep.items():
        if any(under(p, h) for h in spec["hide"]):
            os.makedirs(p, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        os.close(fd)
    work = spec["workdir"]
    for target, opts in mounts():
        if under(target, work) or under(target, "/proc"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts.split(","):
            flags |= _FLAG_OPTS.get(o, 0)
        try:
            mount(None, target, None, flags)
        except OSError:
            # Locked or vanished mounts (e.g. under a hidden dir): fall back to the known flags only.
            try:
                mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            except OSError:
                if target == "/" or any(under(target, e) for e in spec["expose"]):
                    raise
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
