"""labkit: the tested helper package behind the labkit course on making deep learning fast and small.

Modules are named by concept and map to the lessons (see README.md's lesson map):
devices, timing, data, models, train, metrics, checks, plots, widgets, and the lesson modules that build
on them. Import what you need, e.g. ``from labkit.devices import get_device``.
"""

__version__ = "0.1.0"
