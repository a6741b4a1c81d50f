"""Serving a language model on a CPU (lesson ``09_serving_a_language_model``).

* :mod:`~labkit.serving.weight_only` - int8 / int4 weight-only layers run by PyTorch's own CPU
  kernels (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), checked against lesson 06's
  maths;
* :mod:`~labkit.serving.decode` - the memory-bandwidth model of decode (bytes per token, predicted
  tokens/s, ridge batch, roofline) and its measurements (prefill, decode, batch sweep, KV cache);
* :mod:`~labkit.serving.speculative` - speculative decoding from scratch (draft guesses, target
  verifies; exact in distribution), its statistics and the tokens-per-call formula;
"""
