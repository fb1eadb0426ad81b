"""Warm-sandbox agent: runs INSIDE a long-lived bubblewrap sandbox (one per sandbox uid) and
executes commands for the service, so a verification pays for fork+exec instead of building fresh
namespaces and mounts for every compile and run.

Standalone (``python -I -S agent.py``): imports nothing from Halo Forge. Protocol on stdin/stdout:
frames of a 4-byte big-endian length + JSON.

* ``{"op": "run", "argv", "cwd", "env", "stdin": b64, "uid", "gid", "limits": {...}}`` ->
  ``{"rc", "signal", "stdout": b64, "stderr": b64, "timed_out", "output_exceeded", "wall_s", "spawn_error"}``.
  The child gets its own session, the rlimits, no supplementary groups, the sandbox uid/gid and
  no_new_privs before exec; the agent enforces the wall clock and the output cap and SIGKILLs the
  whole process group (and every process of the uid) on expiry.
* ``{"op": "reset", "uid"}`` -> ``{"killed": n, "ipc_removed": m}``: between verifications, kill
  every process of the uid and remove the SysV IPC objects it left (the IPC namespace outlives a
  verification; the PID and network namespaces hold nothing else of it).
* ``{"op": "pyrun", "python", "zygote", "script", "args", "cwd", "env", "uid", "gid", "limits"}``: the same
  as ``run`` for ``python -I script args…``, but the child is forked from a warm interpreter of that
  ``python`` (``_launch/pyzygote.py``, root in the sandbox, started on first use and kept) with the same
  steps before the script runs, so it skips the interpreter start and the harness's imports.
* ``{"op": "ping"}`` -> ``{"ok": true, "launcher": bool}``.

Usage: ``python -I -S agent.py [HALO_EXEC]`` — with the compiled ``halo_exec.c`` the command is
started by vfork+exec of that launcher instead of forking this interpreter.
"""

import base64
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time

PR_SET_NO_NEW_PRIVS = 38
IPC_RMID = 0
libc = ctypes.CDLL(None, use_errno=True)

_LIMITS = {
    "as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE, "nofile": resource.RLIMIT_NOFILE,
}


def _read_exact(f, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))  # a pipe may return less than asked for
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(f):
    head = _read_exact(f, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _read_exact(f, n)
    return None if body is None else json.loads(body)


def write_frame(f, obj):
    data = json.dumps(obj).encode()
    f.write(struct.pack(">I", len(data)) + data)
    f.flush()


def uid_processes(uid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/" + name + "/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] != b"Z":
            out.append(int(name))
    return out


def kill_uid(uid):
    if uid is None:
        return 0
    killed = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pids = uid_processes(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.002)
    return killed


def remove_ipc(uid):
    """Remove SysV shared memory, semaphores and message queues owned (or created) by ``uid``."""
    removed = 0
    for kind, fn, id_col in (("shm", "shmctl", "shmid"), ("sem", "semctl", "semid"), ("msg", "msgctl", "msqid")):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        head = lines[0].split()
        try:
            i_id, i_uid, i_cuid = head.index(id_col), head.index("uid"), head.index("cuid")
        except ValueError:
            continue
        for row in lines[1:]:
            cols = row.split()
            try:
                ident, owners = int(cols[i_id]), {int(cols[i_uid]), int(cols[i_cuid])}
            except (ValueError, IndexError):
                continue
            if uid is None or uid in owners:
                args = (ident, 0, IPC_RMID) if fn == "semctl" else (ident, IPC_RMID, None)
                if getattr(libc, fn)(*args) == 0:
                    removed += 1
    return removed


def exited(pid):
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


LAUNCHER = sys.argv[1] if len(sys.argv) > 1 and os.access(sys.argv[1], os.X_OK) else None


def spawn(req, r_in, w_out, w_err):
    """Start the command: through the C launcher with vfork+exec when there is one (cheap), else
    by forking this interpreter and doing the same steps in Python."""
    limits = req.get("limits") or {}
    uid, gid = req.get("uid"), req.get("gid")
    if LAUNCHER:
        import subprocess

        order = ("as", "cpu", "nproc", "fsize", "nofile")
        argv = [LAUNCHER, *(str(int(limits.get(k, -1))) if k in limits else str(2 ** 62) for k in order),
                str(-1 if uid is None else uid), str(-1 if gid is None else gid), req["cwd"], "--", *req["argv"]]
        proc = subprocess.Popen(argv, stdin=r_in, stdout=w_out, stderr=w_err, env=req["env"], close_fds=True)
        proc.returncode = 0  # reaped by run() with waitid/waitpid, never by Popen
        return proc.pid
    return fork_exec(req, limits, uid, gid, r_in, w_out, w_err)


def fork_exec(req, limits, uid, gid, r_in, w_out, w_err):
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.setsid()
            os.dup2(r_in, 0)
            os.dup2(w_out, 1)
            os.dup2(w_err, 2)
            for name, value in limits.items():
                soft = int(value)
                hard = soft + 1 if name == "cpu" else soft
                resource.setrlimit(_LIMITS[name], (soft, hard))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.chdir(req["cwd"])
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            os.execvpe(req["argv"][0], req["argv"], req["env"])
        except BaseException as exc:  # noqa: BLE001
            try:
                os.write(2, f"cannot execute {req['argv'][0]}: {exc}\n".encode())
            finally:
                os._exit(127)
    return pid


_ZYGOTES = {}


class Zygote:
    """A warm interpreter (``pyzygote.py``) that forks the children of ``pyrun`` requests."""

    def __init__(self, python, script):
        import subprocess

        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
        self.proc = subprocess.Popen([python, "-I", script, str(theirs.fileno())], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     pass_fds=(theirs.fileno(),), cwd="/")
        theirs.close()
        self.child = None

    def alive(self):
        return self.proc.poll() is None

    def spawn(self, req, r_in, w_out, w_err):
        msg = {k: req.get(k) for k in ("cwd", "env", "uid", "gid", "limits", "script", "args")}
        socket.send_fds(self.sock, [json.dumps(msg).encode()], [r_in, w_out, w_err])
        reply = json.loads(self.sock.recv(65536) or b'{"error": "python fork server exited"}')
        if "pid" not in reply:
            raise OSError(reply.get("error", "python fork server failed"))
        self.child = reply["pid"]
        return self.child

    def exited(self):
        """Non-blocking: has the child exited (the fork server says so, or is gone)?"""
        self.sock.setblocking(False)
        try:
            msg = self.sock.recv(64)
        except BlockingIOError:
            return False
        except OSError:
            msg = b""
        finally:
            self.sock.setblocking(True)
        if not msg:
            self.close()
        return True

    def reap(self):
        try:
            self.sock.send(b'{"reap": true}')
            return json.loads(self.sock.recv(64))["status"]
        except (OSError, ValueError, KeyError):
            self.close()
            return 9  # as killed by SIGKILL

    def close(self):
        try:
            self.proc.kill()
            self.proc.wait()
        except OSError:
            pass
        self.sock.close()


def zygote_for(req):
    key = (req["python"], req["zygote"])
    z = _ZYGOTES.get(key)
    if z is None or not z.alive():
        z = _ZYGOTES[key] = Zygote(*key)
    return z


def run(req):
    uid = req.get("uid")
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    start = time.monotonic()
    zyg = None
    if req.get("op") == "pyrun":
        try:
            zyg = zygote_for(req)
            pid = zyg.spawn(req, r_in, w_out, w_err)
        except (OSError, ValueError):
            for fd in (r_in, w_in, r_out, w_out, r_err, w_err):
                os.close(fd)
            if zyg is not None:
                zyg.close()
            raise
    else:
        pid = spawn(req, r_in, w_out, w_err)
    child_exited = zyg.exited if zyg is not None else (lambda: exited(pid))
    for fd in (r_in, w_out, w_err):
        os.close(fd)
    deadline = start + float(req.get("wall_s", 10))
    cap = int(req.get("max_output", 1 << 20))
    bufs = {r_out: bytearray(), r_err: bytearray()}
    pending = memoryview(base64.b64decode(req.get("stdin") or ""))
    sel = selectors.DefaultSelector()
    for fd in (r_out, r_err):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    if pending:
        os.set_blocking(w_in, False)
        sel.register(w_in, selectors.EVENT_WRITE)
    else:
        os.close(w_in)
        w_in = -1
    timed_out = exceeded = False
    exited_at = None
    while sel.get_map() and not exceeded:
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if exited_at is None and child_exited():
            exited_at = now
        if exited_at is not None and now - exited_at > 0.25:
            break
        for key, _ in sel.select(min(deadline - now, 0.05 if exited_at is not None else 0.25)):
            fd = key.fd
            if fd == w_in:
                try:
                    n = os.write(w_in, pending[:65536])
                    pending = pending[n:]
                except BlockingIOError:
                    continue
                except OSError:
                    pending = pending[:0]
                if not pending:
                    sel.unregister(w_in)
                    os.close(w_in)
                    w_in = -1
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(fd)
                continue
            buf = bufs[fd]
            room = cap - len(buf)
            buf += chunk[:room]
            if len(chunk) > room:
                exceeded = True
                break
    if timed_out or exceeded:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        kill_uid(uid)
    grace = max(deadline, time.monotonic()) + 0.5
    while exited_at is None and not child_exited():
        if time.monotonic() > grace:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            kill_uid(uid)
            grace = float("inf")
        time.sleep(0.001)
    try:  # still unreaped, so the group id is ours: nothing in it outlives the command
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if zyg is not None:
        status = zyg.reap()
    else:
        _, status = os.waitpid(pid, 0)
    sel.close()
    for fd in (r_out, r_err, w_in):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    rc = os.waitstatus_to_exitcode(status)
    return {
        "rc": rc, "signal": -rc if rc < 0 else None, "timed_out": timed_out, "output_exceeded": exceeded,
        "wall_s": time.monotonic() - start,
        "stdout": base64.b64encode(bytes(bufs[r_out])).decode(), "stderr": base64.b64encode(bytes(bufs[r_err])).decode(),
    }


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # stray prints must never corrupt the protocol
    while True:
        try:
            req = read_frame(inp)
        except (OSError, ValueError):
            break
        if req is None:
            break
        op = req.get("op")
        try:
            if op in ("run", "pyrun"):
                reply = run(req)
            elif op == "reset":
                reply = {"killed": kill_uid(req.get("uid")), "ipc_removed": remove_ipc(req.get("uid"))}
            elif op == "ping":
                reply = {"ok": True, "pid": os.getpid(), "launcher": LAUNCHER is not None}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        write_frame(out, reply)


if __name__ == "__main__":
    sys.exit(main())
