"""Probabilities to masks at the X-ray's own size, for every consumer.

``evaluate``, ``tune``, ``predict``, ``export`` and the report all go through this package, so
that a number covidseg reports describes exactly the masks ``predict`` writes:

- :mod:`covidseg.inference.backends`: PyTorch and onnxruntime behind one call (images -> logits);
- :mod:`covidseg.inference.postprocess`: the settings (resolved once: flag > ``postprocess.json``
  > config) and the one function that turns probability maps into final masks at native size;
- :mod:`covidseg.inference.bundle`: the exported bundle format (read and validated here);
- :mod:`covidseg.inference.predictor`: :class:`Predictor`, a run or bundle ready to segment.
"""
