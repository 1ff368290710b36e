"""Insight: what a model learned and why.

Modules (imported explicitly, so ``import mmie.insight`` stays light):
  attribution  gradient saliency, integrated gradients, token and image-caption pair attribution
  attention    ViT attention maps recomputed from captured q/k; attention rollout
  plots        PNG plots from arrays, and ``make_run_plots`` for a trained run
  report       the model-running half of ``make_run_plots``
Step cost (FLOPs, MFU, compile time) is measured by ``mmie/train/profiling.py``.
See docs/evaluation.md.
"""
