"""Bad input, one case per row: a documented handling, or a one-line error naming the file and the fix.

Every case drives the real CLI. An error case must exit non-zero through ``cli_errors`` (click's
SystemExit, never an escaped exception, so no traceback), name the offending file and say what to do,
and leave everything already written byte-for-byte as it was (cache, run dir, reports). A handled case
must exit 0 and show that the handling happened (resampling, down-mixing, padding, binarising, resizing).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import zarr
from PIL import Image
from relhelpers import FRAMES, SUBSET, Dataset, cli, extract_args, run, subprocess_env, train_args

from stbava.cache import open_cache
from stbava.data.clips import load_clips
from stbava.data.io import load_audio
from stbava.data.transforms import waveform_to_examples
from stbava.pipeline.extract import features as extract

TEST_CLIP = "syn_test_0000"  # the only test clip: damage it and extraction of --split test meets it first


@dataclass
class Ctx:
    """Private copies of the session's dataset / cache / run, made on first use."""

    tmp: Path
    dataset: Dataset
    ref_cache: Path
    trained_run: Path
    _data: Path | None = None
    _cache: Path | None = None
    _run: Path | None = None

    @property
    def data(self) -> Path:
        if self._data is None:
            self._data = self.dataset.copy(self.tmp / "avsbench")
        return self._data

    @property
    def clip(self):
        return next(c for c in load_clips(self.data, SUBSET, frames=FRAMES) if c.id == TEST_CLIP)

    @property
    def cache(self) -> Path:
        """The reference cache with the test clip not done yet: extraction has work left to do."""
        if self._cache is None:
            self._cache = self.tmp / "cache.zarr"
            shutil.copytree(self.ref_cache, self._cache)
            zarr.open_array(store=str(self._cache / "test" / "done"), mode="r+")[0] = False
        return self._cache

    @property
    def run(self) -> Path:
        if self._run is None:
            self._run = self.tmp / "run"
            shutil.copytree(self.trained_run, self._run)
        return self._run

    def extract(self, *extra: str) -> list[str]:
        return extract_args(self.data, self.cache, *extra)


@dataclass
class Case:
    """One row: ``setup`` damages the copies and returns the command line plus the file the message must name."""

    id: str
    setup: Callable[[Ctx], tuple[list[str], Path]]
    fix: str  # a phrase of the suggested fix that the message must contain
    subprocess: bool = False  # also run it as a real `python -m stbava` child and read its stderr
    protect: list[str] = field(default_factory=lambda: ["cache", "run"])


# ---------------------------------------------------------------- damage helpers


def _write_wav(path: Path, x: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    sf.write(str(path), x, sr, subtype=subtype)


def _frame(ctx: Ctx, k: int = 0) -> Path:
    return ctx.clip.frame_paths[k]


def _missing_frame(ctx):
    p = _frame(ctx, 1)
    p.unlink()
    return ctx.extract("--num-workers", "2"), p  # decoded in DataLoader workers: still one clean line


def _truncated_png(ctx):
    p = _frame(ctx, 2)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # a half-downloaded file
    return ctx.extract(), p


def _corrupt_png(ctx):
    p = _frame(ctx, 0)
    p.write_bytes(b"<html><body>502 Bad Gateway</body></html>\n")  # what a failed download often saves
    return ctx.extract(), p


def _frame_other_size(ctx):
    p = _frame(ctx, 1)
    Image.open(p).resize((320, 240)).save(p)  # one frame of the clip differs from the others
    return ctx.extract(), p


def _zero_byte_wav(ctx):
    p = ctx.clip.wav_path
    p.write_bytes(b"")
    return ctx.extract(), p


def _nan_wav(ctx):
    p = ctx.clip.wav_path
    x = load_audio(p)
    x[1000:1010] = np.nan
    _write_wav(p, x, 16000, "FLOAT")
    return ctx.extract(), p


def _inf_wav(ctx):
    p = ctx.clip.wav_path
    x = load_audio(p)
    x[5] = np.inf
    _write_wav(p, x, 16000, "DOUBLE")
    return ctx.extract(), p


def _too_short_wav(ctx):
    p = ctx.clip.wav_path
    _write_wav(p, np.zeros(8000, np.int16), 16000)  # 0.5 s: not even one 0.96 s VGGish example
    return ctx.extract(), p


def _mask_wrong_size(ctx):
    p = ctx.clip.mask_paths[0]
    Image.open(p).resize((112, 112), Image.NEAREST).save(p)
    return ["eval", "--checkpoint", str(ctx.run / "best.pt"), "--cache", str(ctx.ref_cache), "--data-root",
            str(ctx.data), "--out", str(ctx.run / "report.json"), "--device", "cpu"], p


def _rewrite_csv(ctx, edit: Callable[[list[str]], list[str]]) -> Path:
    p = ctx.data / "ms3_meta_data.csv"
    p.write_text("\n".join(edit(p.read_text().splitlines())) + "\n")
    return p


def _csv_missing_column(ctx):
    p = _rewrite_csv(ctx, lambda lines: [ln.split(",")[0] for ln in lines])
    return ctx.extract(), p


def _csv_unknown_split(ctx):
    p = _rewrite_csv(ctx, lambda lines: [ln.replace(",val", ",validation") for ln in lines])
    return ctx.extract(), p


def _csv_duplicate_ids(ctx):
    p = _rewrite_csv(ctx, lambda lines: lines + [lines[1]])
    return ctx.extract(), p


def _no_csv(ctx):
    (ctx.data / "ms3_meta_data.csv").unlink()
    return ctx.extract(), ctx.data


def _cache_other_encoder_extract(ctx):
    return ctx.extract("--seed", "1"), ctx.cache  # same cache, other (random-init) VGGish/SAM weights


def _foreign_cache(ctx) -> Path:
    """A cache whose manifest says another encoder made it (as if built with --seed 1)."""
    p = ctx.tmp / "other.zarr"
    shutil.copytree(ctx.ref_cache, p)
    m = json.loads((p / "stbava_manifest.json").read_text())
    m["fingerprint"]["image"]["weights"] = "random-init seed=1"
    (p / "stbava_manifest.json").write_text(json.dumps(m))
    return p


def _cache_other_encoder_eval(ctx):
    other = _foreign_cache(ctx)
    return ["eval", "--checkpoint", str(ctx.run / "best.pt"), "--cache", str(other), "--data-root", str(ctx.data),
            "--out", str(ctx.run / "report.json"), "--device", "cpu"], ctx.run / "best.pt"


def _cache_truncated_chunk(ctx):
    chunk = ctx.cache / "train" / "image" / "c" / "1" / "0" / "0" / "0" / "0"  # clip row 1, frame 0
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 3])
    return train_args(ctx.cache, ctx.data, ctx.tmp / "new_run"), ctx.cache


def _checkpoint_other_config(ctx):
    # resume the run with a deeper model than its last.pt was trained with
    args = train_args(ctx.ref_cache, ctx.data, ctx.run)
    args[args.index("--depth") + 1] = "2"
    return args, ctx.run / "last.pt"


def _checkpoint_cut_short_eval(ctx):
    p = ctx.run / "best.pt"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return ["eval", "--checkpoint", str(p), "--cache", str(ctx.ref_cache), "--data-root", str(ctx.data),
            "--out", str(ctx.tmp / "report.json"), "--device", "cpu"], p


def _checkpoint_cut_short_resume(ctx):
    p = ctx.run / "last.pt"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    return train_args(ctx.ref_cache, ctx.data, ctx.run), p


ERRORS = [
    Case("missing-frame", _missing_frame, "re-extract the frames", subprocess=True),
    Case("truncated-png", _truncated_png, "re-extract the frames"),
    Case("corrupt-png", _corrupt_png, "re-extract the frames"),
    Case("frame-size-differs-within-clip", _frame_other_size, "re-extract the frames"),
    Case("zero-byte-wav", _zero_byte_wav, "re-extract the 16 kHz wav"),
    Case("nan-wav", _nan_wav, "re-extract the audio"),
    Case("inf-wav", _inf_wav, "re-extract the audio"),
    Case("wav-shorter-than-one-example", _too_short_wav, "use a longer clip"),
    Case("mask-wrong-size", _mask_wrong_size, "resize the mask with nearest-neighbour"),
    Case("csv-missing-column", _csv_missing_column, "re-download the metadata CSV", subprocess=True),
    Case("csv-unknown-split", _csv_unknown_split, "expected train/val/test"),
    Case("csv-duplicate-clip-ids", _csv_duplicate_ids, "remove one"),
    Case("no-metadata-csv", _no_csv, "point --data-root at"),
    Case("cache-of-another-encoder-extract", _cache_other_encoder_extract, "choose another --cache path"),
    Case("cache-of-another-encoder-eval", _cache_other_encoder_eval, "evaluate it against the cache it was trained on"),
    Case("cache-truncated-chunk", _cache_truncated_chunk, "stbava extract-features"),
    Case("checkpoint-of-another-config", _checkpoint_other_config, "start a new --out folder"),
    Case("checkpoint-cut-short-eval", _checkpoint_cut_short_eval, "retrain", subprocess=True),
    Case("checkpoint-cut-short-resume", _checkpoint_cut_short_resume, "--no-resume"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def ctx(tmp_path, dataset, ref_cache, trained_run) -> Ctx:
    return Ctx(tmp_path, dataset, ref_cache, trained_run)


@pytest.mark.parametrize("case", ERRORS, ids=[c.id for c in ERRORS])
def test_bad_input_gives_a_clear_error_and_loses_nothing(case: Case, ctx: Ctx):
    args, named = case.setup(ctx)
    protected = {name: getattr(ctx, f"_{name}") for name in case.protect if getattr(ctx, f"_{name}") is not None}
    before = {name: _snapshot(p) for name, p in protected.items()}
    ref_before = _snapshot(ctx.ref_cache)

    r = cli(*args)
    assert r.exit_code != 0, r.output
    assert isinstance(r.exception, SystemExit), f"escaped exception {r.exception!r} (a traceback for the user)"
    assert "Error: " in r.output and "Traceback" not in r.output
    message = r.output[r.output.index("Error: "):]
    assert str(named) in message or named.name in message, f"message does not name {named}: {message}"
    assert case.fix in message, f"message does not suggest '{case.fix}': {message}"

    for name, p in protected.items():  # nothing already written is lost or changed
        assert _snapshot(p) == before[name], f"{name} changed by a failed command"
        assert not any(q.name.endswith(".lock") for q in p.parent.iterdir()), "lock file left behind"
    assert _snapshot(ctx.ref_cache) == ref_before

    if case.subprocess:  # the real process: exit 1 and one message on stderr, no traceback
        proc = run(*args)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert str(named) in proc.stderr or named.name in proc.stderr


# ---------------------------------------------------------------- handled cases


def _extract_test_clip(ctx: Ctx) -> np.ndarray:
    """Extract only the damaged test clip into a new cache (with log-mels); returns its log-mel examples."""
    cache = ctx.tmp / "new.zarr"
    r = cli(*extract_args(ctx.data, cache, "--split", "test", "--store-log-mel"))
    assert r.exit_code == 0, r.output
    reader = open_cache(cache)
    assert reader.clip_ids("test") == [TEST_CLIP]
    img, aud = reader.image_embeddings(TEST_CLIP), reader.audio_embeddings(TEST_CLIP)
    assert img.shape == (FRAMES, 256, 16, 16) and aud.shape == (FRAMES, 128)
    assert np.isfinite(img.astype(np.float32)).all() and np.isfinite(aud).all()
    return reader.log_mels(TEST_CLIP)


def _original_examples(ctx: Ctx, scale: float = 1.0) -> np.ndarray:
    return waveform_to_examples(load_audio(ctx.dataset.root / ctx.clip.wav_path.relative_to(ctx.data)) * scale,
                                num_examples=FRAMES)


def test_wav_at_44k_is_resampled_to_16k(ctx):
    x = load_audio(ctx.clip.wav_path)
    from scipy.signal import resample_poly

    _write_wav(ctx.clip.wav_path, resample_poly(x, 441, 160).astype(np.float32), 44100, "FLOAT")
    mels = _extract_test_clip(ctx)
    ref = _original_examples(ctx)
    assert mels.shape == ref.shape
    # the round trip 16 -> 44.1 -> 16 kHz leaves 62 of the 64 log-mel bands within 0.02; the top two
    # (above ~7.2 kHz) sit in the resampling filter's roll-off below the 8 kHz Nyquist frequency
    diff = np.abs(mels - ref)
    assert diff[..., :62].max() < 0.02 and diff[..., 62:].mean() < 0.5


def test_stereo_wav_is_downmixed_by_averaging(ctx):
    p = ctx.clip.wav_path
    x, sr = sf.read(str(p), dtype="int16")
    _write_wav(p, np.stack([x, np.zeros_like(x)], axis=1), sr)  # sound on the left channel only
    np.testing.assert_array_equal(_extract_test_clip(ctx), _original_examples(ctx, scale=0.5))


def test_two_second_wav_is_padded_by_repeating_the_last_example(ctx):
    p = ctx.clip.wav_path
    x, sr = sf.read(str(p), dtype="int16")
    _write_wav(p, x[: 2 * sr], sr)
    mels = _extract_test_clip(ctx)
    ref = _original_examples(ctx)
    np.testing.assert_array_equal(mels[:2], ref[:2])  # the two whole examples are the original ones
    np.testing.assert_array_equal(mels[2], mels[1])  # frame 3 gets a copy of the last one


def test_silent_wav_is_fine(ctx):
    p = ctx.clip.wav_path
    _write_wav(p, np.zeros(FRAMES * 16000, np.int16), 16000)
    mels = _extract_test_clip(ctx)
    np.testing.assert_allclose(mels, np.log(0.01), rtol=1e-6)  # log-mel of silence is the constant offset


# Sam.pixel_mean / Sam.pixel_std of segment_anything (modeling/sam.py)
SAM_PIXEL_MEAN, SAM_PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def test_frames_of_another_size_are_resized_like_sam(ctx, monkeypatch):
    """The whole clip at 320x240: the encoder is fed SAM's ``ResizeLongestSide`` of each frame, computed here by
    hand (longest side -> img_size, the other ``int(side * scale + 0.5)``, PIL bilinear), aspect kept and not
    padded; the cache holds the encoder's output on that input normalised and zero-padded like ``Sam.preprocess``."""
    for p in ctx.clip.frame_paths:
        Image.open(p).resize((320, 240)).save(p)
    seen, real = [], extract.encode_batch

    def spy(image_encoder, vggish, items, *args, **kwargs):  # what the image encoder is given, clip by clip
        seen.append((image_encoder, [it["frames"].clone() for it in items]))
        return real(image_encoder, vggish, items, *args, **kwargs)

    monkeypatch.setattr(extract, "encode_batch", spy)
    _extract_test_clip(ctx)
    [(encoder, [frames])] = seen  # one batch holding the one test clip
    side = encoder.img_size
    scale = side / 320
    h, w = int(240 * scale + 0.5), int(320 * scale + 0.5)
    assert (h, w) == (192, 256) and side == 256  # the tiny encoder's 256: 320x240 -> 256x192
    resized = [Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR) for p in ctx.clip.frame_paths[:FRAMES]]
    want = torch.from_numpy(np.stack([np.asarray(im) for im in resized])).permute(0, 3, 1, 2).float()
    assert frames.shape == (FRAMES, 3, h, w)
    torch.testing.assert_close(frames, want, rtol=0, atol=0)

    mean, std = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    padded = F.pad((want - mean) / std, (0, side - w, 0, side - h))  # zeros right and below, after normalising
    with torch.inference_mode():
        emb = encoder.encoder(padded).to(torch.float16).numpy()
    got = open_cache(ctx.tmp / "new.zarr").image_embeddings(TEST_CLIP)
    # the cache stores float16: allow about one half-precision step (2^-10 relative)
    np.testing.assert_allclose(got.astype(np.float32), emb.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_mask_with_values_other_than_0_255_is_binarised(ctx, trained_run, ref_cache):
    def report(data_root: Path, out: Path) -> dict:
        r = cli("eval", "--checkpoint", str(trained_run / "best.pt"), "--cache", str(ref_cache),
                "--data-root", str(data_root), "--out", str(out), "--device", "cpu")
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())

    want = report(ctx.dataset.root, ctx.tmp / "ref.json")
    for k, p in enumerate(ctx.clip.mask_paths):  # 0/1-coded, palette and anti-aliased grey masks
        m = np.asarray(Image.open(p).convert("L")) > 0
        if k == 0:
            Image.fromarray(m.astype(np.uint8)).save(p)  # values 0/1 (as palette-index masks read)
        elif k == 1:
            pal = Image.fromarray(m.astype(np.uint8), mode="L").convert("P")
            pal.save(p)
        else:
            Image.fromarray(np.where(m, 128, 0).astype(np.uint8)).save(p)  # a mid-grey foreground
    got = report(ctx.data, ctx.tmp / "got.json")
    assert got["miou"] == want["miou"] and got["fscore"] == want["fscore"]


def test_verify_redoes_a_damaged_clip_in_place_and_keeps_the_rest(ctx, ref_cache):
    _cache_truncated_chunk(ctx)  # clip row 1 of train: a chunk that no longer decodes
    r = cli(*extract_args(ctx.dataset.root, ctx.cache, "--verify"))
    assert r.exit_code == 0, r.output
    # the damaged clip is re-extracted (plus any clip the shared cache fixture left undone); the rest are kept
    m = re.search(r"wrote (\d+), (\d+) already done", r.output)
    assert m and int(m.group(1)) >= 1 and int(m.group(1)) + int(m.group(2)) == 6, r.output
    got, want = open_cache(ctx.cache), open_cache(ref_cache)
    for split in want.splits():
        assert got.clip_ids(split) == want.clip_ids(split)
        for cid in want.clip_ids(split):
            np.testing.assert_array_equal(got.image_embeddings(cid), want.image_embeddings(cid))
            np.testing.assert_array_equal(got.audio_embeddings(cid), want.audio_embeddings(cid))


def test_check_data_lists_every_damaged_file_before_extraction(ctx):
    """`stbava check-data` finds what extraction would trip on, all in one run, with the fix for each."""
    damaged = [_truncated_png(ctx)[1], _frame_other_size(ctx)[1], _nan_wav(ctx)[1]]
    mask = ctx.clip.mask_paths[1]
    Image.open(mask).resize((100, 100)).save(mask)
    damaged.append(mask)
    r = cli("check-data", "--data-root", str(ctx.data), "--subset", SUBSET, "--frames", str(FRAMES))
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.splitlines()
    for p in damaged:
        line = next((ln for ln in lines if str(p) in ln), None)
        assert line is not None, f"{p} not reported:\n{r.output}"
        assert "re-extract" in line or "re-download" in line or "resize" in line, line
    assert "4 problem(s) found" in r.output


def test_child_processes_run_with_the_test_process_thread_count():
    """The ``python -m stbava`` children of this suite (relhelpers.subprocess_env) use the intra-op thread count
    of the test process: what lets a cache written by a child equal the in-process reference bit for bit.
    Checked with the suite's count and with 1, which differs from a child's default (one thread a core) on
    any machine of more than one core (a count above the cores is not one to check: torch caps it there)."""
    before = torch.get_num_threads()
    try:
        for n in dict.fromkeys((before, 1)):
            torch.set_num_threads(n)
            child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                   env=subprocess_env(), capture_output=True, text=True, timeout=120, check=True)
            assert int(child.stdout) == n
    finally:
        torch.set_num_threads(before)
