"""Imported first by the feature workers' fork server (`forkserver.PRELOAD`): the cyclic garbage
collector is off for the imports that follow.

Importing librosa, scipy and numba allocates some 500,000 objects and sets off full collections
that free nothing: ~0.3 s of the ~1.6 s before the server can fork its first worker, while the
command waits for that worker. Each worker turns the collector back on as it starts
(`prepare._init_worker`), with what it inherited frozen out of its collections.
"""

import gc

gc.disable()
