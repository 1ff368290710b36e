"""A full disk is recognised in every form it reaches us, and told in one actionable line."""

import errno
import os

import pytest

from mmie.train import hooks, storage

# Verbatim (paths shortened) from orbax/TensorStore when a checkpoint write hit a file-size
# limit: a ValueError, whose only trace of the cause is the OS error code in its text.
TENSORSTORE_EFBIG = (
    'OUT_OF_RANGE: Error writing "opt_state.1.0.mu.logit_scale/0" in OCDBT database at local'
    ' file "/w/checkpoints/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/":'
    ' Failed writing: "/w/checkpoints/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
    'ocdbt.process_0/d/90e2": Failed to write 26364 bytes to file 20: File too large'
    " [os_error_code='27']")


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    OSError(errno.EFBIG, "File too large"),
    ValueError(TENSORSTORE_EFBIG),
    ValueError(TENSORSTORE_EFBIG.replace("'27'", "'28'")),
])
def test_out_of_space_is_recognised(error):
  assert storage.out_of_space(error)


def test_out_of_space_is_found_in_the_cause_chain():
  try:
    try:
      raise ValueError(TENSORSTORE_EFBIG)
    except ValueError as inner:
      raise RuntimeError("checkpoint save failed") from inner
  except RuntimeError as outer:
    assert storage.out_of_space(outer)


@pytest.mark.parametrize("error", [
    OSError(errno.EACCES, "Permission denied"),
    FileNotFoundError(errno.ENOENT, "No such file"),
    ValueError("shape mismatch (27,) vs (28,)"),  # Numbers, but not an OS error code.
    ValueError("NOT_FOUND: ... [os_error_code='2']"),
])
def test_other_errors_are_not_out_of_space(error):
  assert not storage.out_of_space(error)


def test_the_error_names_the_newest_complete_checkpoint(tmp_path):
  ckpts = tmp_path / "checkpoints"
  for name in ("2", "4", "6.orbax-checkpoint-tmp"):  # 6 was being written: not complete.
    (ckpts / name).mkdir(parents=True)
  text = TENSORSTORE_EFBIG.replace('"/w/', f'"{tmp_path}/')
  error = storage.full_error(ValueError(text), str(ckpts))
  assert isinstance(error, OSError) and error.errno == errno.ENOSPC
  message = error.strerror
  assert "File too large" in message
  # The last path in the text: the file whose write failed.
  assert f"writing {ckpts}/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/90e2:"\
      in message
  assert "the newest complete checkpoint, step 4, is intact" in message
  assert "steps [2, 4]" in message and "re-run the same command" in message


@pytest.mark.parametrize("junk", [
    "[source locations='tensorstore/kvstore/file/file_key_value_store.cc:406']",  # Not a path.
    '{\\"path\\":\\"/\\"}',  # Escaped JSON: a lone "/" before a backslash.
    "/etc/hosts",  # A path, but outside the workdir: no run of ours wrote it.
])
def test_the_error_names_no_path_outside_the_workdir(tmp_path, junk):
  """An error text (or one in its context chain) may quote what is not the failed write."""
  try:
    try:
      raise KeyError(junk)  # Handled earlier, left in the context chain.
    except KeyError:
      raise ValueError(f"OUT_OF_RANGE: write failed {junk} [os_error_code='27']")
  except ValueError as e:
    error = storage.full_error(e, str(tmp_path / "checkpoints"))
  assert "while writing a file in the workdir: no checkpoint" in error.strerror, error.strerror


def test_the_error_says_when_no_checkpoint_was_complete(tmp_path):
  error = storage.full_error(OSError(errno.ENOSPC, "No space left on device",
                                     str(tmp_path / "metrics.jsonl")), str(tmp_path / "none"))
  assert f"writing {tmp_path / 'metrics.jsonl'}" in error.strerror
  assert "No space left on device" in error.strerror
  assert "no checkpoint had been completed yet" in error.strerror
  assert storage.committed_steps(str(tmp_path / "none")) == []


def test_close_all_closes_everything_and_keeps_the_first_error():
  closed = []

  def ok(name):
    return lambda: closed.append(name)

  def fails(name):
    def close():
      closed.append(name)
      raise OSError(errno.ENOSPC, name)
    return close

  with pytest.raises(OSError, match="first"):
    hooks.close_all(ok("a"), fails("first"), fails("second"), ok("b"))
  assert closed == ["a", "first", "second", "b"]

  closed.clear()
  with pytest.raises(KeyError, match="original"):  # Already propagating: it stays the error.
    try:
      raise KeyError("original")
    finally:
      hooks.close_all(fails("x"), ok("y"))
  assert closed == ["x", "y"]


def test_committed_steps_ignores_other_entries(tmp_path):
  for name in ("10", "2", "8.orbax-checkpoint-tmp", "notes"):
    os.makedirs(tmp_path / name)
  assert storage.committed_steps(str(tmp_path)) == [2, 10]
