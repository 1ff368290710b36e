"""Data: sources prepared as TFDS array_record shards, read by one grain pipeline.

Modules (imported explicitly; importing this package pulls in neither tfds nor grain):
  sources      the ``data.name`` registry: call-strings and mixtures -> prepared sources
  pipeline     build_train_iterator, load_eval_split, encode_prompts, tokenizer_for
  augment      decode, resize, random resized crop, flip, colour jitter, normalise
  tokenizer    train a byte-level BPE; load tokenizer.json or a HF tokenizer directory
  emoji        TFDS builder of the embedded emoji image-caption set (repository data/emoji/)
  readers      raw user formats: caption folders, webdataset tars, labelled IDX files
  validate     per-item checks and the chunk files of a preparation
  prepare      ``python -m mmie.data.prepare``: parallel, resumable, reported preparation
  prepared     the TFDS builder that stores prepared user sources
  tfds_source  any TFDS dataset by name as an image-text source
See docs/data.md.
"""
