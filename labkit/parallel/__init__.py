"""Parallelism on real processes through torch.distributed (lessons 03 and 04).

``launch`` runs a worker on N local processes; the lesson modules beside it implement data,
pipeline and tensor parallelism from first principles and check them against PyTorch's.
"""
