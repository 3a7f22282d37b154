"""What the command line must set before torch loads; `cli.py` imports it before any module that imports torch.

OpenMP threads that wait by spinning (libgomp's default spins before it sleeps) fight any other busy process for the
cores: beside one busy process on the 2-core CPU, the default `vidprune generate` took 14.9 s of pipeline time with
spinning threads and 6.4 s with a passive wait policy, which sleeps at once. On a quiet machine spinning is the
faster one (3.2 s against 5.5 s: the embedded model's small kernels wait often and briefly), and a short spin does
not help the busy case (GOMP_SPINCOUNT=10000: 18 s). So the CLI chooses by what it finds running when it starts:
passive when another task is runnable, libgomp's default otherwise, and never over a policy the user chose.
libgomp reads the policy once, when torch's library loads, so this runs first.
"""

import os

LOADAVG = "/proc/loadavg"


def another_task_running(loadavg: str = LOADAVG) -> bool:
    """Whether a task besides this process is runnable now: /proc/loadavg's running count (which counts this
    process) above 1. Unreadable (no procfs): True, as a busy machine is where the wrong choice costs the most."""
    try:
        with open(loadavg) as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return True
    return running > 1


def choose_wait_policy(environ: dict, busy: bool) -> None:
    """PASSIVE where the user set no policy and the machine is busy; the user's policy, or libgomp's, otherwise."""
    if "OMP_WAIT_POLICY" not in environ and busy:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"


choose_wait_policy(os.environ, another_task_running())
