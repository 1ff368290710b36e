"""Data: sources prepared as TFDS array_record shards, read by one grain pipeline.

Modules (imported explicitly; importing this package pulls in neither tfds nor grain):
  schema       the ``data`` and ``data.augment`` keys, their defaults (``data_value``)
  catalog      every source by name and kind (image-text, parallel text): what data.name names
  spec         data.name checked before anything is prepared; the data views; tokenizer_for
  sources      image-text sources: call-strings and mixtures -> prepared sources
  parallel     parallel-text (sentence pair) sources; sword reads SWORD Bible modules
  records      random-access records and the per-host, shuffled, mixed index stream
  pipeline     build_train_iterator / load_eval_split of the task's view; the image-text view
  text_views   the ``text`` (captions alone) and ``parallel_text`` views
  augment      decode, resize, random resized crop, flip, colour jitter, normalise
  tokenizer    train a byte-level BPE; load tokenizer.json or a HF tokenizer directory
  emoji        TFDS builder of the embedded emoji image-caption set (repository data/emoji/)
  readers      raw user formats: caption folders, webdataset tars, labelled IDX files
  streaming    webdataset shards streamed from fsspec paths, dealt to hosts, resumable
  validate     per-item checks and the chunk files of a preparation
  prepare      ``python -m mmie.data.prepare``: parallel, resumable, reported preparation
  prepared     the TFDS builder that stores prepared user sources
  tfds_source  any TFDS dataset by name as an image-text source
See docs/data.md.
"""
