"""Test-session settings.

BLAS threads: the Monte Carlo tests multiply many small matrices (batches of B inputs through
N x N layers); multi-threaded OpenBLAS on such products is 10-100x slower than one thread when the
cores are shared (measured on the 2-core CI machine under load). One thread per process, set
before numpy is imported, unless the caller chose otherwise.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
