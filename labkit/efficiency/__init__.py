"""Lesson 02, one device made efficient: profiling, data loading, mixed precision, torch.compile,
memory (parameters, gradients, optimizer state, activations, checkpointing) and optimizers.

Import the module you need, e.g. ``from labkit.efficiency import profiling``.
"""
