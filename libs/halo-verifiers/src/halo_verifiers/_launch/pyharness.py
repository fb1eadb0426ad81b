"""Test harness for Python test verifiers (humaneval, mbpp), run INSIDE the sandbox.

Standalone (``python -I harness.py config.json``): imports nothing from Halo Forge. It loads the
candidate program, then runs each test unit separately so a verifier can give partial credit:

* mode ``check`` (HumanEval): the test program defines ``check(candidate)``; every top-level
  statement of check's body that contains an ``assert`` is one test, the others (imports,
  helper assignments) are setup and run in order; ``candidate`` is bound to the entry point.
* mode ``asserts`` (MBPP): every string in ``tests`` is one test.

Each test gets its own time limit (SIGALRM); an exception (even SystemExit) fails only that test.
Reports go to a private duplicate of stdout as lines carrying a random nonce the candidate does not
know (the config file and this file are deleted before the candidate runs), so ordinary prints
cannot forge results: ``<nonce>{"event": "plan"|"loaded"|"test"|"load_error"|"setup_error"|"done", …}``.
"""

import ast
import json
import os
import signal
import sys


class _TestTimeout(BaseException):
    pass


def _on_alarm(_sig, _frame):
    raise _TestTimeout()


def _fmt(exc):
    if isinstance(exc, _TestTimeout):
        return "timeout"
    text = f"{type(exc).__name__}: {exc}"
    return text[:300]


def _contains_assert(node):
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _plan(cfg):
    """[(is_test, code_object)] for the configured mode."""
    units = []
    if cfg["mode"] == "check":
        tree = ast.parse(cfg["tests"])
        check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
        if check is None:
            raise ValueError("the test program defines no check(candidate) function")
        arg = check.args.args[0].arg if check.args.args else "candidate"
        for stmt in check.body:
            mod = ast.Module(body=[stmt], type_ignores=[])
            units.append((_contains_assert(stmt), compile(mod, "<test>", "exec")))
        return units, arg
    for src in cfg["tests"]:
        units.append((True, compile(src, "<test>", "exec")))
    return units, None


def main():
    cfg_path = sys.argv[1]
    with open(cfg_path) as f:
        cfg = json.load(f)
    for p in (cfg_path, os.path.abspath(__file__)):
        try:
            os.remove(p)
        except OSError:
            pass
    nonce = cfg["nonce"]
    out = os.fdopen(os.dup(1), "w", buffering=1)

    def report(**kw):
        out.write("\n" + nonce + json.dumps(kw) + "\n")
        out.flush()

    units, arg = _plan(cfg)
    total = sum(1 for is_test, _ in units if is_test)
    report(event="plan", total=total)
    signal.signal(signal.SIGALRM, _on_alarm)
    per_test = float(cfg.get("test_timeout_s", 3.0))
    ns = {"__name__": cfg.get("module_name", "__candidate__"), "__builtins__": __builtins__}
    with open(cfg["program"]) as f:
        program = f.read()
    try:
        signal.setitimer(signal.ITIMER_REAL, float(cfg.get("load_timeout_s", per_test)))
        exec(compile(program, "solution.py", "exec"), ns)
        if cfg.get("setup"):
            exec(compile(cfg["setup"], "<setup>", "exec"), ns)
        if cfg["mode"] == "check":
            exec(compile(cfg["tests"], "<tests>", "exec"), ns)
            entry = cfg.get("entry_point")
            if entry not in ns:
                raise NameError(f"entry point {entry!r} is not defined by the completion")
            ns[arg] = ns[entry]
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:  # noqa: BLE001 - the candidate may raise anything
        signal.setitimer(signal.ITIMER_REAL, 0)
        report(event="load_error", error=_fmt(exc))
        out.flush()
        os._exit(0)
    report(event="loaded")
    index = 0
    for is_test, code in units:
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test)
            exec(code, ns)
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok, err = True, None
        except BaseException as exc:  # noqa: BLE001
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok, err = False, _fmt(exc)
        if is_test:
            report(event="test", i=index, ok=ok, error=err)
            index += 1
        elif not ok:
            report(event="setup_error", error=err)
            break
    report(event="done")
    out.flush()
    os._exit(0)  # skip atexit handlers the candidate may have registered


if __name__ == "__main__":
    main()
