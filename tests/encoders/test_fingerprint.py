"""Encoder fingerprints: JSON-able, stable, and sensitive to everything that changes the embeddings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil

import pytest

from stbava import digest as digestmod
from stbava.config import ConfigError, EncoderConfig
from stbava.digest import file_sha256
from stbava.encoders.fingerprint import encoder_fingerprint, fingerprint_digest
from stbava.state_dict import CheckpointError


def test_random_init_fingerprint_is_jsonable_and_stable() -> None:
    enc = EncoderConfig()
    fp = encoder_fingerprint(enc, frames=5)
    assert json.loads(json.dumps(fp)) == fp
    assert fp["image"]["encoder"] == "tiny" and fp["image"]["img_size"] == 256 and fp["image"]["grid"] == 16
    assert fp["image"]["kwargs"]["embed_dim"] == 64 and fp["image"]["kwargs"]["norm_eps"] == 1e-6
    assert fp["image"]["weights"].startswith("random-init seed=0")
    assert fp["audio"]["weights"].startswith("random-init seed=0 (kaiming_normal")
    assert fp["audio"]["pca"] is None
    assert fp["audio"]["log_mel"]["sample_rate"] == 16000 and fp["audio"]["log_mel"]["mel_bands"] == 64
    assert fp["frames"] == 5
    d = fingerprint_digest(fp)
    assert re.fullmatch(r"[0-9a-f]{16}", d)
    assert d == fingerprint_digest(encoder_fingerprint(EncoderConfig(), frames=5))
    # Key order does not matter (canonical JSON).
    assert fingerprint_digest(dict(reversed(list(fp.items())))) == d


@pytest.mark.parametrize("change", [
    {"name": "vit_b"}, {"seed": 1}, {"frames": 3},
])
def test_fingerprint_changes_with_encoder_seed_frames(change) -> None:
    base = fingerprint_digest(encoder_fingerprint(EncoderConfig(), frames=5))
    frames = change.pop("frames", 5)
    enc = dataclasses.replace(EncoderConfig(), **change)
    assert fingerprint_digest(encoder_fingerprint(enc, frames=frames)) != base


def test_checkpoints_are_identified_by_content(tmp_path) -> None:
    sam = tmp_path / "sam.pth"
    sam.write_bytes(os.urandom(3 * (1 << 20) + 123))  # spans several 1 MiB blocks
    vgg = tmp_path / "vggish.pth"
    vgg.write_bytes(b"vggish weights")
    pca = tmp_path / "pca.npz"
    pca.write_bytes(b"pca")
    enc = EncoderConfig(name="tiny", sam_checkpoint=str(sam), vggish_checkpoint=str(vgg), vggish_pca=str(pca))
    fp = encoder_fingerprint(enc, frames=5)
    assert fp["image"]["weights"] == "sha256:" + hashlib.sha256(sam.read_bytes()).hexdigest()
    assert fp["audio"]["weights"] == "sha256:" + hashlib.sha256(b"vggish weights").hexdigest()
    assert fp["audio"]["pca"] == "sha256:" + hashlib.sha256(b"pca").hexdigest()
    # The seed is irrelevant once both checkpoints are given; the path is irrelevant too.
    moved = tmp_path / "elsewhere" / "sam_copy.pth"
    moved.parent.mkdir()
    shutil.copy(sam, moved)
    same = dataclasses.replace(enc, sam_checkpoint=str(moved), seed=42)
    assert fingerprint_digest(encoder_fingerprint(same, 5)) == fingerprint_digest(fp)
    without_pca = dataclasses.replace(enc, vggish_pca=None)
    assert fingerprint_digest(encoder_fingerprint(without_pca, 5)) != fingerprint_digest(fp)


def test_digest_cache_notices_a_rewritten_file(tmp_path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"a" * 10)
    first = file_sha256(f)
    assert file_sha256(f) == first and len(digestmod._cache) >= 1
    st = f.stat()
    f.write_bytes(b"b" * 10)  # same size; force a different mtime so the cache key changes
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_sha256(f) == hashlib.sha256(b"b" * 10).hexdigest() != first


def test_missing_checkpoint_and_unknown_encoder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="sam_vit_h_4b8939.pth"):
        encoder_fingerprint(EncoderConfig(name="vit_h", sam_checkpoint=str(tmp_path / "x.pth")), 5)
    with pytest.raises(CheckpointError, match="vggish-10086976.pth"):
        encoder_fingerprint(EncoderConfig(vggish_checkpoint=str(tmp_path / "v.pth")), 5)
    with pytest.raises(ConfigError):
        encoder_fingerprint(EncoderConfig(name="vit_q"), 5)
