"""llama-edge runtime: artifact reader, compiled kernels, tokenizer, chat formats, sampling,
generation and tasks. Never imports torch."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The runtime's own thread pool uses every core during a forward pass; numpy's BLAS threads
# (which spin after any BLAS call) would compete with it. Only effective before numpy loads.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
