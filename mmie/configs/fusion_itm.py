"""ALBEF-style fusion model on the embedded emoji set: contrastive (ITC) + image-text matching
(ITM) with hard negatives, evaluated by retrieval, ITM accuracy and ITM re-ranking.

The towers, data and optimizer are configs/clip.py's (so runs compare with CLIP); on top a
cross-attention fusion encoder and a 2-way ITM head (docs/models.md, Fusion). The loss is the
sum of the two terms the ``matching`` task feeds: ``clip`` on the unimodal embeddings and
``cross_entropy`` on the ITM logits of [positives; negatives], half of them hard (sampled by
similarity) and half uniform.

Presets (``--config=configs/fusion_itm.py:PRESET``):
  default  a few minutes on 2 CPU cores.
  tiny     a seconds-long smoke run used by the tests.
"""

import ml_collections

from mmie.configs import clip


def _fusion(tiny: bool) -> ml_collections.ConfigDict:
  """Fusion layers as wide as the text tower's, half as deep as CLIP's default towers."""
  return ml_collections.ConfigDict({
      "kind": "cross_attention", "depth": 1 if tiny else 2,
      "num_heads": 2 if tiny else 4, "mlp_dim": 64 if tiny else 256, "dropout_rate": 0.0})


def _loss() -> ml_collections.ConfigDict:
  """ITC + ITM, each term naming the task outputs it reads (``mmie/tasks/matching.py``)."""
  return ml_collections.ConfigDict({"terms": {
      "itc": {"name": "clip", "weight": 1.0, "inputs": {
          "image_emb": "image_emb", "text_emb": "text_emb", "logit_scale": "logit_scale"}},
      "itm": {"name": "cross_entropy", "weight": 1.0, "inputs": {
          "logits": "logits", "targets": "targets", "mask": "mask"}},
  }})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the fusion + ITM config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in ("default", "tiny"):
    raise ValueError(f"configs/fusion_itm.py: unknown preset {preset!r}; choose 'default' or "
                     "'tiny'.")
  tiny = preset == "tiny"
  config = clip.recipe_base(preset)  # Data, optimizer, schedule and towers as CLIP's.
  # Half the ITM negatives uniform: from scratch, pure hard negatives leave the ITM head at
  # the class prior for the whole run (docs/models.md, Matching task).
  config.task = "matching(random_negatives=0.5)"
  if tiny:
    config.batch_size = 8  # Three fusion passes per pair: keep the smoke run seconds-long.
  else:
    config.batch_size = 64
    config.total_steps = 240
    config.eval_every = 120
  config.model.name = "fusion"
  del config.model["logit_bias_init"]  # A sigmoid bias has no place in the fusion model.
  config.model.fusion = _fusion(tiny)
  config.loss = _loss()
  config.evals = ml_collections.ConfigDict({"eval": {
      "type": "matching", "prefix": "eval/", "rerank_k": 8 if tiny else 16,
      "batch_size": 64 if tiny else 256}})
  return config
