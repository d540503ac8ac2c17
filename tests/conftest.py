"""Test-session settings.

BLAS threads: the Monte Carlo tests multiply many small matrices (batches of B inputs through
N x N layers); multi-threaded OpenBLAS on such products is 10-100x slower than one thread when the
cores are shared (measured on the 2-core CI machine under load). One thread per process, set
before numpy is imported, unless the caller chose otherwise.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Hypothesis: derandomized on CI (the examples are a fixed function of each test, so a green run
# stays green and a red one reproduces), random locally so that development keeps exploring.
# `HYPOTHESIS_PROFILE=explore python -m pytest` explores on CI machines too.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "explore"))
