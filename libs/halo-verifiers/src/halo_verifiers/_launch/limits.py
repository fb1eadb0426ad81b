"""Apply rlimits, then exec a command. Used where ``prlimit`` is missing (macOS).

Standalone on purpose (run with ``python -I -S``): it imports nothing from Halo Forge.

    python -I -S limits.py --as BYTES --cpu S --nproc N --fsize BYTES --nofile N -- argv...
"""

import os
import resource
import sys


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    names = {
        "--as": "RLIMIT_AS", "--cpu": "RLIMIT_CPU", "--nproc": "RLIMIT_NPROC",
        "--fsize": "RLIMIT_FSIZE", "--nofile": "RLIMIT_NOFILE",
    }
    for i in range(0, len(opts), 2):
        res = getattr(resource, names[opts[i]], None)
        if res is None:
            continue
        value = int(opts[i + 1])
        hard = value + 1 if opts[i] == "--cpu" else value
        try:
            resource.setrlimit(res, (value, hard))
        except (ValueError, OSError):
            pass  # e.g. RLIMIT_AS is not enforceable on macOS; the other limits still apply
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
