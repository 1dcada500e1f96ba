import torch

# The suite runs thousands of small ops; one thread avoids OpenMP barrier stalls on a busy 2-core
# machine and keeps results bit-identical between runs.
torch.set_num_threads(1)
