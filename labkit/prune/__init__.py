"""Pruning: make a network sparse (unstructured) or narrower (structured), and measure what it buys.

The lesson is ``notebooks/05_pruning.ipynb``; the capstone (08) builds on the same calls.

* :mod:`labkit.prune.masks` - magnitude masks, layer-wise and global, applied as
  parametrizations (kept through training), made permanent, and sparsity reports.
  Checked against ``torch.nn.utils.prune``.
* :mod:`labkit.prune.schedule` - Zhu & Gupta's cubic schedule and :class:`GradualPruner`
  (an ``after_step`` hook for ``labkit.train.fit``), sensitivity analysis, L1 regularisation
  and its proximal step (soft thresholding).
* :mod:`labkit.prune.structured` - :class:`ChannelPruner`: remove whole channels / neurons by
  filter norm and get a smaller dense model (BatchNorm and following layers adjusted).
* :mod:`labkit.prune.sparse` - store sparse weights compactly (bitmask, CSR, COO); a CSR Linear layer.
* :mod:`labkit.prune.nm` - masks from any score: N:M groups (2:4) and a fixed share per output row.
* :mod:`labkit.prune.wanda` - calibration statistics of each Linear's inputs, Wanda's
  ``|W| * ||X_j||`` importance, and magnitude / Wanda pruning of a language model's Linear layers.
* :mod:`labkit.prune.llm` - the course model's perplexity table (magnitude vs Wanda, 50% and 2:4),
  the spread of its input norms, and a CUDA-only timing of 2:4 sparse kernels.

A typical session::

    from labkit import prune
    prune.magnitude_prune_(model, 0.8, scope="global")   # masks; fine-tune with fit() as usual
    print(prune.sparsity_report(model))
    prune.make_permanent_(model)
    small = prune.ChannelPruner(cnn, cnn.example_inputs(), importance="l1", ratio=0.5).step()
"""

from labkit.prune.llm import calibration_batches, norm_spread, pruning_table, time_semi_structured
from labkit.prune.masks import (
    WeightMask,
    apply_masks_,
    compute_masks,
    get_masks,
    magnitude_mask,
    magnitude_prune_,
    make_permanent_,
    prunable_layers,
    sparsity,
    sparsity_report,
)
from labkit.prune.nm import is_nm_sparse, nm_mask, row_mask
from labkit.prune.schedule import (
    GradualPruner,
    cubic_sparsity,
    l1_penalty,
    l1_regularized,
    sensitivity_analysis,
    soft_threshold_,
)
from labkit.prune.sparse import CsrLinear, dense_state_dict, sparse_state_dict
from labkit.prune.structured import ChannelPruner, l1_importance, l2_importance, zero_channels_
from labkit.prune.wanda import (
    compute_linear_masks,
    input_sq_norms,
    linear_layers,
    prune_linear_,
    wanda_scores,
)

__all__ = [
    "WeightMask", "apply_masks_", "compute_masks", "get_masks", "magnitude_mask", "magnitude_prune_",
    "make_permanent_", "prunable_layers", "sparsity", "sparsity_report",
    "GradualPruner", "cubic_sparsity", "l1_penalty", "l1_regularized", "sensitivity_analysis", "soft_threshold_",
    "CsrLinear", "dense_state_dict", "sparse_state_dict",
    "ChannelPruner", "l1_importance", "l2_importance", "zero_channels_",
    "is_nm_sparse", "nm_mask", "row_mask",
    "calibration_batches", "norm_spread", "pruning_table", "time_semi_structured",
    "compute_linear_masks", "input_sq_norms", "linear_layers", "prune_linear_", "wanda_scores",
]
