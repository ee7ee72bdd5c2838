"""The demo: synthetic scenes and videos with known content, and the demo model's training.

Nothing in the production path imports this package: only ``make demo`` (``scripts/demo.py``),
the demo producer of the compose stack, the training scripts, tests and benches do.

- :mod:`pipeline.demo.scenes`: seeded synthetic scenes (shapes, colours, printed words) and
  their captions;
- :mod:`pipeline.demo.video`: videos of those scenes with known objects at known times;
- :mod:`pipeline.demo.training`: training and evaluating ``clipguard-demo``, the tiny CLIP the
  package ships.
"""
