"""Data: sources prepared as TFDS array_record shards, read by one grain pipeline.

Modules (imported explicitly; importing this package pulls in neither tfds nor grain):
  sources    the ``data.name`` registry: call-string -> prepared splits + example adapter
  emoji      TFDS builder of the embedded emoji image-caption set (repository data/emoji/)
  pipeline   build_train_iterator, load_eval_split, encode_prompts, tokenizer_for
  augment    resize, random resized crop, flip, colour jitter, normalise (numpy + pillow)
  tokenizer  train a byte-level BPE; load tokenizer.json or a HF tokenizer directory
"""
