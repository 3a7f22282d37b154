"""What the command line must set before torch loads; `cli.py` imports it before any module that imports torch.

OpenMP threads that wait by spinning (libgomp's default spins before it sleeps) fight any other busy process for the
cores: beside one, the default `vidprune generate` took 99 s instead of about 8 s on a 2-core machine, against its own
spinning threads. A passive wait policy sleeps at once. libgomp reads it once, when torch's library loads, so it is
set here, first, and only where the user has not chosen a policy of their own.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
