"""The benchmark behind ``bench.py``: PVD vs SDS lifting vs retrieval on the same test shapes.

``bench.py`` is the command line (its docstring documents the conventions); this package holds
the work, one concept per module:

- ``common``: constants every part shares (metrics, methods, thresholds, bootstrap settings),
  seeds and atomic writers;
- ``data``: the test shapes and their ground truth;
- ``model``: a trained PVD run, sampled and timed;
- ``baselines``: the SDS lifting command and the retrieval / oracle baselines;
- ``scoring``: per-shape metrics; ``aggregates``: means, intervals, differences, distributions;
- ``figures``: the PNG figures; ``report``: results.md, results.csv and the conventions text;
- ``run``: one benchmark run; ``training``: ``bench.py train``.
"""
