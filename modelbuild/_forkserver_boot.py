"""Imported first, and only, by the forkserver of :mod:`modelbuild.workers`, before the modules
plugins declare: it caps the BLAS and OpenMP thread pools at one thread.

numpy's OpenBLAS starts its threads when it loads. A server that imported numpy with them
would fork its workers from a multi-threaded process, which is what the forkserver is there
to avoid (and what Python 3.12+ warns about). One thread each is also right for the workers:
a transform runs ``ctx.jobs`` of them, one per core. The limits are inherited by the workers.

Never import this module anywhere else: it changes ``os.environ``.
"""

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"
