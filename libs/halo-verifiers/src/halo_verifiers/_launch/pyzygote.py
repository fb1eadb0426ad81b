"""Python fork server of a warm sandbox: runs INSIDE the bubblewrap sandbox, started by the agent
(``_launch/agent.py``) as root-in-the-sandbox with the toolchain's interpreter (``python -I pyzygote.py FD``),
so a Python test harness costs a fork instead of an interpreter start plus its imports.

Standalone: imports nothing from Halo Forge. It never sees item data: requests carry only paths, the
environment, the uid and the limits; the program and its tests are files in the workspace that the
child reads after it dropped its privileges. Protocol on the SOCK_SEQPACKET socket FD (one message each):

* ``{"cwd", "env", "uid", "gid", "limits", "script", "args"}`` + 3 fds (stdin, stdout, stderr) ->
  ``{"pid"}``; the child does what ``halo_exec.c`` does (own session, the fds, rlimits, no core dumps,
  cwd, no supplementary groups, the uid/gid, no_new_privs), replaces its environment and runs
  ``script`` as ``__main__`` with ``sys.argv = [script, *args]``;
* then ``{"exited": true}`` once the child has exited (not yet reaped, so its process group id stays
  the agent's to kill), and after the agent's ``{"reap": true}``: ``{"status": waitstatus}``.
"""

import ast  # noqa: F401  (pre-imported for the harness)
import ctypes
import json
import os
import resource
import signal
import socket
import sys

PR_SET_NO_NEW_PRIVS = 38
_LIMITS = {
    "as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE, "nofile": resource.RLIMIT_NOFILE,
}
libc = ctypes.CDLL(None, use_errno=True)


def child(req, fds, sock):
    """In the forked child: drop everything, then run the script. Never returns."""
    try:
        os.setsid()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        os.closerange(3, 65536)
        del sock
        for name, value in (req.get("limits") or {}).items():
            soft = int(value)
            resource.setrlimit(_LIMITS[name], (soft, soft + 1 if name == "cpu" else soft))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(req["cwd"])
        uid, gid = req.get("uid"), req.get("gid")
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as a freshly started interpreter has it
        os.environ.clear()
        os.environ.update(req["env"])
        script = req["script"]
        sys.argv = [script, *req.get("args", [])]
        with open(script) as f:
            source = f.read()
        code = compile(source, script, "exec")
        ns = {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__}
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(2, f"cannot start {req.get('script')}: {exc}\n".encode())
        finally:
            os._exit(127)
    try:
        exec(code, ns)
        rc = 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        rc = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(rc & 0xFF)


def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 65536, 3)
        except OSError:
            return
        if not msg:
            return
        try:
            req = json.loads(msg)
        except ValueError:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"error": "bad request"}).encode())
            continue
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"error": "expected 3 fds"}).encode())
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(req, fds, sock)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        sock.send(b'{"exited": true}')
        try:
            ack = sock.recv(64)
        except OSError:
            ack = b""
        _, status = os.waitpid(pid, 0)
        if not ack:
            return
        sock.send(json.dumps({"status": status}).encode())


if __name__ == "__main__":
    main()
