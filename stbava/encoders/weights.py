"""Finding the weight files a cache or checkpoint was made with, and proving they are the same files.

Every cache and checkpoint records its encoders' fingerprint (sha256 of each weight file, or
``random-init seed=N``) and the encoder config with the paths the files had. A later stage (predict, eval on
raw frames, finetune-adapters) looks for each file, in this order:

1. the path given on the command line (``--sam-checkpoint`` / ``--vggish-checkpoint`` / ``--vggish-pca``);
2. the recorded path;
3. a file of the recorded name in ``--weights-dir``, then in each folder of ``$STBAVA_WEIGHTS``
   (``os.pathsep``-separated).

The file found must have the recorded sha256. A missing or different file is a :class:`CheckpointError`
naming the file, the digest expected and where users get it. A random-init encoder is built only where the
record says random-init, never as a fallback for a file that is not there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stbava.config import EncoderConfig
from stbava.digest import file_sha256
from stbava.encoders.checkpoints import where_to_get
from stbava.state_dict import CheckpointError

# what -> (EncoderConfig field, fingerprint section, fingerprint key, CLI option, official file name)
_FILES = {
    "sam": ("sam_checkpoint", "image", "weights", "--sam-checkpoint", "sam_vit_h_4b8939.pth"),
    "vggish": ("vggish_checkpoint", "audio", "weights", "--vggish-checkpoint", "vggish-10086976.pth"),
    "vggish_pca": ("vggish_pca", "audio", "pca", "--vggish-pca", "vggish_pca_params-970ea276.pth"),
}
ENV_VAR = "STBAVA_WEIGHTS"


@dataclass(frozen=True)
class WeightSearch:
    """Where to look for weight files besides the recorded paths.

    Attributes:
        given: ``{"sam_checkpoint": path, ...}`` from the command line (None or missing = not given).
        weights_dir: ``--weights-dir``; ``$STBAVA_WEIGHTS`` folders are searched after it.
    """

    given: Mapping[str, str | None] = field(default_factory=dict)
    weights_dir: str | None = None

    def folders(self) -> list[Path]:
        env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
        return [Path(p).expanduser() for p in ([self.weights_dir] if self.weights_dir else []) + env]


def _recorded(fingerprint: Mapping[str, Any], what: str) -> str | None:
    _, section, key, _, _ = _FILES[what]
    return fingerprint.get(section, {}).get(key)


def _candidates(what: str, recorded_path: str | None, search: WeightSearch) -> list[Path]:
    fld, _, _, _, official = _FILES[what]
    if search.given.get(fld):
        return [Path(str(search.given[fld])).expanduser()]
    name = Path(recorded_path).name if recorded_path else official
    return ([Path(recorded_path).expanduser()] if recorded_path else []) + [d / name for d in search.folders()]


def _locate_one(what: str, want: str, recorded_path: str | None, search: WeightSearch, subject: str) -> str:
    _, _, _, option, _ = _FILES[what]
    digest = want.removeprefix("sha256:")
    tried = _candidates(what, recorded_path, search)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        looked = ", ".join(str(p) for p in tried) or "nowhere (no path recorded)"
        raise CheckpointError(
            f"{subject} needs the {what} weights with sha256 {digest}, which were not found (looked at: {looked}); "
            f"{where_to_get(what)}, or put the file in --weights-dir / ${ENV_VAR}")
    got = file_sha256(found)
    if got != digest:
        raise CheckpointError(
            f"{found} is not the {what} file {subject} was made with: its sha256 is {got}, expected {digest}; "
            f"pass the original file with {option} ({where_to_get(what)})")
    return str(found.resolve())


def locate_weights(enc: EncoderConfig, fingerprint: Mapping[str, Any] | None, search: WeightSearch | None = None,
                   *, subject: str, only: tuple[str, ...] = ("sam", "vggish", "vggish_pca")) -> EncoderConfig:
    """``enc`` with every weight path replaced by the verified file the fingerprint asks for.

    Args:
        enc: the recorded encoder config (name, seed, numerics, the paths the files had).
        fingerprint: the recorded encoder fingerprint (``stbava.encoders.fingerprint.encoder_fingerprint``).
        search: command-line paths and folders to search.
        subject: what needs the files, e.g. ``"checkpoint runs/x/best.pt"`` (named in errors).
        only: the files needed (stage two's decoder init needs only ``sam``); others keep their paths.

    Raises:
        CheckpointError: no fingerprint recorded, a file not found or with another digest, or a file given
            for an encoder that was random-initialised (or PCA given where none was used).
    """
    search = search or WeightSearch()
    if fingerprint is None:
        raise CheckpointError(
            f"{subject} records no encoder fingerprint, so the weights it needs are unknown; re-create it "
            "(`stbava import-official ... --sam-checkpoint ... --vggish-checkpoint ...` for published weights)")
    found: dict[str, str | None] = {}
    for what, (fld, _, _, option, _) in _FILES.items():
        if what not in only:
            continue
        want = _recorded(fingerprint, what)
        if want is None or not str(want).startswith("sha256:"):  # random-init (or PCA off): nothing to load
            if search.given.get(fld):
                state = want or "no PCA"
                raise CheckpointError(f"{subject} was made with {what}: {state}; {option} {search.given[fld]} "
                                      "does not belong to it: drop the option")
            found[fld] = None
            continue
        found[fld] = _locate_one(what, str(want), getattr(enc, fld), search, subject)
    return dataclasses.replace(enc, **found)


def record_paths(enc: EncoderConfig) -> EncoderConfig:
    """``enc`` with absolute weight paths, as caches and checkpoints record them (a later ``cd`` still finds them)."""
    absolute = {fld: str(Path(getattr(enc, fld)).expanduser().resolve()) for fld, *_ in _FILES.values()
                if getattr(enc, fld)}
    return dataclasses.replace(enc, **absolute)


OFFICIAL_SAM = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}


def official_encoder_files(enc: EncoderConfig, search: WeightSearch) -> EncoderConfig:
    """The SAM and VGGish files a published model ran with: given by option, or the official files by name.

    Published ST-BAVA weights were trained on the official SAM checkpoint of their encoder and the official
    VGGish (PCA off, REFERENCE §9.2). Each file is looked for as given, else by its official name in
    ``--weights-dir`` / ``$STBAVA_WEIGHTS``; PCA only when given. The paths (absolute) go into the returned
    config, and from it into the checkpoint's fingerprint (sha256), so later stages verify the same files.

    Raises:
        CheckpointError: a file not given and not found (``tiny`` has no official SAM: give one).
    """
    names = {"sam": OFFICIAL_SAM.get(enc.name), "vggish": _FILES["vggish"][4]}
    found: dict[str, str | None] = {"vggish_pca": search.given.get("vggish_pca") or None}
    for what, name in names.items():
        fld, option = _FILES[what][0], _FILES[what][3]
        given = search.given.get(fld)
        tried = [Path(str(given)).expanduser()] if given else [d / name for d in search.folders()] if name else []
        hit = next((p for p in tried if p.is_file()), None)
        if hit is None:
            looked = ", ".join(str(p) for p in tried) or "nowhere"
            raise CheckpointError(
                f"the {what} weights the published model ran with were not found (looked at: {looked}); "
                f"{where_to_get(what)}, or put {name or 'the file'} in --weights-dir / ${ENV_VAR} "
                f"(option {option})")
        found[fld] = str(hit.resolve())
    return dataclasses.replace(enc, **found)
