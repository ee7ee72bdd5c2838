"""Policy authoring tools: lint, regression examples, explanations, threshold calibration.

What ``clipguard policy`` runs, as library functions that return plain dataclasses (the command
line formats them). Every tool that scores media decides through the same judge as the stream
worker and scans (:mod:`pipeline.policies.tools.judging`):

- :func:`lint`: load and validate policy files, and check that every example and exemplar
  they name exists and is a kind of file clipguard decodes;
- :func:`run_examples`: score each policy's ``examples`` the way the pipeline would (decode,
  encode, judge; for videos the policy's temporal rule too) and say which pass;
- :func:`explain`: why a label passed or not on one image (its ensemble score, margin,
  probability and every single prompt's and negative's cosine), or a per-frame timeline of
  a video;
- :func:`calibrate`: score folders of labelled positive and negative images, sweep each
  label's threshold over the observed scores and suggest the one with the best recall at a
  target precision; :func:`write_pr_plot` draws the precision-recall curves and
  :func:`write_threshold` writes a chosen threshold back into the policy file, keeping its
  comments and layout.

Nothing here imports torch until a function needs the model, so linting stays fast.
"""

from pipeline.policies.tools.calibrate import (
    Calibration,
    CalibrationCurve,
    CurvePoint,
    calibrate,
)
from pipeline.policies.tools.edit import write_threshold, write_thresholds
from pipeline.policies.tools.examples import ExampleResult, run_examples
from pipeline.policies.tools.explain import (
    Explanation,
    ImageExplanation,
    LabelExplanation,
    PromptScore,
    TimelineFrame,
    VideoExplanation,
    explain,
)
from pipeline.policies.tools.judging import Incident
from pipeline.policies.tools.lint import LintReport, lint, lint_text
from pipeline.policies.tools.plot import write_pr_plot

__all__ = [
    "Calibration",
    "CalibrationCurve",
    "CurvePoint",
    "ExampleResult",
    "Explanation",
    "ImageExplanation",
    "Incident",
    "LabelExplanation",
    "LintReport",
    "PromptScore",
    "TimelineFrame",
    "VideoExplanation",
    "calibrate",
    "explain",
    "lint",
    "lint_text",
    "run_examples",
    "write_pr_plot",
    "write_threshold",
    "write_thresholds",
]
