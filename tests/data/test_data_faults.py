"""Data faults are counted and reported, never fatal: image modes PIL handles badly by default
(CMYK, 16-bit, palette with transparency, animated), a wrong file extension, a decompression
bomb, a captions file with bad rows (reported with their line numbers), and tar shards with
undecodable or empty captions (counted, the rest of the shard kept)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmie.data import prepare, readers, validate
from tests.data.test_data_prepare import decoded, png_bytes, read_split

GRADIENT16 = (np.arange(12 * 12, dtype=np.uint32).reshape(12, 12) * 455).astype(np.uint16)


def _images(folder) -> dict[str, np.ndarray]:
  """Writes one image per awkward mode; returns the RGB pixels each must read back as."""
  expected = {}
  cmyk = np.zeros((10, 14, 4), np.uint8)  # CMYK (0, 0, 0, 0) is white.
  Image.fromarray(cmyk, mode="CMYK").save(folder / "cmyk.jpg", quality=100)
  expected["cmyk.jpg"] = np.full((10, 14, 3), 255, np.uint8)
  Image.fromarray(GRADIENT16).save(folder / "gray16.png")  # Mode I;16.
  expected["gray16.png"] = np.repeat(
      np.round(GRADIENT16 / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
  palette = Image.new("P", (8, 8), 1)
  palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
  palette.putpixel((0, 0), 0)
  palette.save(folder / "palette.png", transparency=0)  # Index 0 transparent.
  want = np.tile(np.array([200, 10, 10], np.uint8), (8, 8, 1))
  want[0, 0] = 255  # Transparent: composited on white.
  expected["palette.png"] = want
  frames = [Image.new("RGB", (6, 6), c) for c in ((0, 0, 255), (0, 255, 0), (255, 0, 0))]
  frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
  expected["animated.gif"] = np.tile(np.array([0, 0, 255], np.uint8), (6, 6, 1))  # Frame 0.
  png = np.random.default_rng(0).integers(0, 255, (9, 9, 3), dtype=np.uint8)
  Image.fromarray(png).save(folder / "really_a_png.jpg", format="PNG")  # Wrong extension.
  expected["really_a_png.jpg"] = png
  Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(folder / "bomb.png")
  return expected


BAD_LINES = ((b'{"file": "x.png", "caption": ', "not JSON"),           # Cut short.
             (b'["not", "an", "object"]', "a JSON list"),
             (b'{"file": "y.png", "caption": "caf\xe9"}', "not UTF-8"),  # Latin-1 bytes.
             (b'{"caption": "a caption without a file"}', "no file"))


def _captions_jsonl(folder, names) -> dict[int, str]:
  """A blank line, the good rows, the bad ones, the bomb; returns {bad line number: why}."""
  lines = [b""] + [json.dumps({"file": n, "caption": f"picture {n}"}).encode() for n in names]
  bad = {}
  for line, why in BAD_LINES:
    lines.append(line)
    bad[len(lines)] = why  # 1-based: the line just appended.
  lines.append(b'{"file": "bomb.png", "caption": "too many pixels"}')
  (folder / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  return bad


def test_awkward_images_read_back_as_their_rgb_and_bad_rows_are_listed(tmp_path, monkeypatch):
  folder = tmp_path / "data"
  folder.mkdir()
  expected = _images(folder)
  bad_lines = _captions_jsonl(folder, list(expected))
  # The decompression-bomb limit, lowered so that a 40x40 image trips it (PIL's default is
  # 89M pixels: the same check, without writing a huge file here).
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

  report = prepare.prepare(readers.FolderReader(str(folder)), str(tmp_path / "out"),
                           limits=validate.Limits(max_size=0), validation_fraction=0.0,
                           workers=1)
  counts = report["counts"]
  assert (counts["kept"], counts["bad_captions_row"], counts["corrupt_image"]) == (5, 4, 1)
  assert "bomb.png" in report["skipped"]["corrupt_image"][0]
  assert "DecompressionBomb" in report["skipped"]["corrupt_image"][0]
  bad = report["skipped"]["bad_captions_row"]
  for line, why in bad_lines.items():
    assert any(f"line {line}:" in b and why in b for b in bad), (line, bad)
  records = read_split(report["out_dir"], "train")
  for name, pixels in expected.items():
    got = decoded(records[name]["image"]).astype(int)
    # JPEG (CMYK re-encoded as RGB JPEG) is lossy by a few levels; PNG and GIF are exact.
    assert got.shape == pixels.shape, name
    assert np.abs(got - pixels).max() <= (3 if name == "cmyk.jpg" else 0), name


@pytest.mark.parametrize("ext,sep", [("csv", ","), ("tsv", "\t")])
def test_delimited_captions_report_bad_rows_by_line(tmp_path, ext, sep):
  folder = tmp_path / "data"
  folder.mkdir()
  Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "ok.png")
  rows = [f"file{sep}caption", f"ok.png{sep}fine", f"ok.png{sep}one{sep}field too many",
          f"ok.png{sep}"]
  data = "\n".join(rows).encode() + b"\n" + f"ok.png{sep}caf".encode() + b"\xe9\n"
  (folder / f"captions.{ext}").write_bytes(data)
  reader = readers.FolderReader(str(folder))
  assert reader.bad_rows() == [(3, "3 fields where the header has 2"), (5, "not UTF-8 text")]
  assert reader.entries()[0] == [("ok.png", ["fine", ""], "", "")]


def _add(tar, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


# One tar shard: (key, {extension: payload}), in this order, and the skip each must give.
_SAMPLES = (("a_good", {"txt": b"a red square"}, None),
            ("b_latin1", {"txt": b"caf\xe9 au lait"}, ("undecodable_caption",
                                                        "b_latin1.txt: not UTF-8 (byte 0xe9 at 3)")),
            ("c_cut_json", {"json": b'{"caption": "cut', "txt": b"fine"},
             ("undecodable_caption", "c_cut_json.json: Unterminated string")),
            ("d_json_list", {"json": b'["a", "list"]'},
             ("undecodable_caption", "d_json_list.json: a JSON list, not an object")),
            ("e_empty", {"txt": b"  \n "}, ("empty_caption", "no non-empty caption")),
            ("f_json_caption", {"json": json.dumps({"caption": "from the json"}).encode()}, None),
            ("g_good_after", {"txt": b"still read after the bad ones"}, None))


def test_webdataset_bad_captions_are_counted_and_the_rest_of_the_shard_kept(tmp_path):
  with tarfile.open(tmp_path / "shard.tar", "w") as tar:
    for i, (key, files, _) in enumerate(_SAMPLES):  # Distinct pixels: none is a duplicate.
      _add(tar, f"{key}.png", png_bytes(np.full((6, 6, 3), 10 * i, np.uint8)))
      for ext, payload in files.items():
        _add(tar, f"{key}.{ext}", payload)
  report = prepare.prepare(readers.WebDatasetReader(str(tmp_path / "shard.tar")),
                           str(tmp_path / "out"), limits=validate.Limits(max_size=0),
                           validation_fraction=0.0, workers=1)
  counts = report["counts"]
  assert (counts["kept"], counts["undecodable_caption"], counts["empty_caption"],
          counts["unreadable_source"]) == (3, 3, 1, 0), counts
  for key, _, skip in _SAMPLES:
    if skip is not None:
      reason, why = skip
      assert any(f"shard.tar:{key}" in line and why in line
                 for line in report["skipped"][reason]), (key, report["skipped"])
  records = read_split(report["out_dir"], "train")
  assert {k: r["captions"] for k, r in records.items()} == {
      "shard.tar/a_good": ["a red square"], "shard.tar/f_json_caption": ["from the json"],
      "shard.tar/g_good_after": ["still read after the bad ones"]}
