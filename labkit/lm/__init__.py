"""labkit.lm: the language model behind lesson 09 (serving a language model).

* :mod:`labkit.lm.corpus` - byte tokenizer, the offline ``pydoc_data.topics`` corpus, split, batches;
* :mod:`labkit.lm.model` - a small GPT (``GPTConfig``, ``GPT``, named ``CONFIGS``, the naive attention oracle);
* :mod:`labkit.lm.generate` - sampling and a from-scratch KV cache (``generate``, ``KVCache``);
* :mod:`labkit.lm.train` - ``course_model(name)``: trained once, cached by a hash of config and code;
* :mod:`labkit.lm.evaluate` - loss, perplexity and bits per byte on the validation split;
* :mod:`labkit.lm.flops` - FLOPs per token and model FLOP utilisation (MFU).
"""
