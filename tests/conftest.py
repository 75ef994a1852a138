"""Suite-wide settings: one torch thread per test process.

The tests run tiny models, where a second OpenMP thread costs more in synchronisation than it
gains, and on a busy 2-core machine spinning threads slowed some files 20x.
"""

import torch

torch.set_num_threads(1)
