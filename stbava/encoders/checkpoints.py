"""Reading the official SAM / VGGish weight files, with errors that tell users what to fetch.

Why a module of its own: the reference code loads checkpoints with ``strict=False`` and silently skips
missing paths (REFERENCE §10.4), so a typo quietly evaluates a random model. Here every load is strict,
every failure is a :class:`CheckpointError` naming the file, what was expected and where it comes from,
and nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbava.state_dict import CheckpointError, examples
from stbava.thirdparty import SAM_PE_KEY

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/"
_TVG_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"

# what -> (description, where users get the file, how they pass it)
_KNOWN: dict[str, tuple[str, str, str]] = {
    "sam": (
        "the official SAM checkpoint (full state dict with image_encoder.* keys)",
        (f"{_SAM_URL}sam_vit_h_4b8939.pth (vit_h), {_SAM_URL}sam_vit_l_0b3195.pth (vit_l) or "
         f"{_SAM_URL}sam_vit_b_01ec64.pth (vit_b); for SAM 2 (a {{'model': state_dict}} file) "
         f"{_SAM2_URL}092824/sam2.1_hiera_large.pt (sam2.1_hiera_l; _tiny, _small, _base_plus likewise) or "
         f"{_SAM2_URL}072824/sam2_hiera_large.pt (sam2_hiera_l); the `tiny` and `sam2_mini` encoders have no "
         "official weights and are random-initialised when no checkpoint is given"),
        "--sam-checkpoint PATH (config: encoder.sam_checkpoint)",
    ),
    "vggish": (
        "the torchvggish VGGish weights vggish-10086976.pth",
        f"{_TVG_URL}vggish-10086976.pth (torchvggish release v0.1, github.com/harritaylor/torchvggish/releases)",
        "--vggish-checkpoint PATH (config: encoder.vggish_checkpoint)",
    ),
    "vggish_pca": (
        "the VGGish PCA parameters (pca_eigen_vectors, pca_means) as .pth or .npz",
        f"{_TVG_URL}vggish_pca_params-970ea276.pth (torchvggish release v0.1); PCA is optional and off by default",
        "config: encoder.vggish_pca",
    ),
}

# The released PCA .pth pickles numpy arrays; weights_only loading refuses them unless these (and only
# these) numpy reconstruction helpers are allow-listed. Files written with numpy 1.x name the helper
# under numpy.core, files from numpy 2.x under numpy._core, so both spellings are mapped.
try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_NUMPY_SAFE_GLOBALS: list[Any] = [
    (_np_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_np_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)),
]


def where_to_get(what: str) -> str:
    """One sentence telling users which file ``what`` expects and where they download it themselves."""
    if what not in _KNOWN:
        return f"expected {what}"
    desc, source, how = _KNOWN[what]
    return f"expected {desc}; get it from {source} (stbava never downloads) and pass {how}"


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, or raise CheckpointError if it is not an existing file."""
    p = Path(path).expanduser()
    if not p.is_file():
        state = "is a directory" if p.is_dir() else "does not exist"
        raise CheckpointError(f"{what} checkpoint {p} {state}: {where_to_get(what)}")
    return p


def _as_tensor_dict(obj: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(
            f"{what} checkpoint {path} holds a {type(obj).__name__}, not a state dict (str -> tensor): "
            f"{where_to_get(what)}"
        )
    return dict(obj)


def load_state_file(path: str | Path, what: str) -> dict[str, Any]:
    """Load a state dict on CPU without executing arbitrary pickled code.

    Args:
        path: ``.pth``/``.pt`` file (torch.save of a dict) or, for ``vggish_pca``, also ``.npz``.
        what: ``"sam"``, ``"vggish"``, ``"vggish_pca"`` (these get download hints in errors) or any
            short description of the file.

    Returns:
        The dict as stored (tensors, or numpy arrays for the PCA file).
    """
    p = require_file(path, what)
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{what} file {p} is not a readable .npz ({e}): {where_to_get(what)}") from e
    try:
        # weights_only=True keeps untrusted files from running code; the numpy allow-list only admits
        # plain arrays (needed for the official PCA file, ENV-NOTES §3).
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with allow(_NUMPY_SAFE_GLOBALS) if allow else contextlib.nullcontext():
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{what} checkpoint {p} could not be read as a torch state dict ({first[:200]}); the file may be "
            f"truncated or not a checkpoint: {where_to_get(what)}"
        ) from e
    return _as_tensor_dict(obj, p, what)


PE_KEY = SAM_PE_KEY


def sam_decoder_state(sd: Mapping[str, Any], source: str = "SAM checkpoint") -> dict[str, Any]:
    """The parts of a full SAM state dict the mask-decoder side needs.

    Returns:
        ``{"mask_decoder.<...>": tensor, ..., PE_KEY: G [2,128]}``, keys exactly as in the file, so
        the model builder can load them strictly. The decoder must be used with the PE matrix it was
        trained with (REFERENCE §9.2), hence both come from the same file.
    """
    out = {k: v for k, v in sd.items() if k.startswith("mask_decoder.")}
    if not out or PE_KEY not in sd:
        lacking = [n for n, ok in (("mask_decoder.*", bool(out)), (PE_KEY, PE_KEY in sd)) if not ok]
        raise CheckpointError(
            f"{source} has no {' and no '.join(lacking)} keys (found e.g. {examples(sorted(sd), 3)}): "
            f"{where_to_get('sam')}"
        )
    out[PE_KEY] = sd[PE_KEY]
    return out


def describe_state(sd: Mapping[str, Any]) -> str:
    """A short guess of what kind of file a state dict came from, for error messages."""
    keys = set(sd)
    if any(k.startswith("image_encoder.") for k in keys):
        return "a SAM checkpoint"
    if "features.0.weight" in keys and "embeddings.0.weight" in keys:
        return "a VGGish checkpoint (vggish-10086976.pth layout)"
    if {"pca_eigen_vectors", "pca_means"} <= keys:
        return "a VGGish PCA parameter file"
    if "patch_embed.proj.weight" in keys:
        return "an image-encoder-only state dict (keys without the image_encoder. prefix)"
    if keys == {"model"} and isinstance(sd["model"], Mapping) and any(
            str(k).startswith("sam_mask_decoder.") for k in sd["model"]):
        return "a SAM 2 checkpoint ({'model': state_dict}; pass a SAM 2 --encoder, e.g. sam2.1_hiera_l)"
    if any(k.startswith(("model.", "state_dict.")) for k in keys) or keys & {"model", "state_dict"}:
        return "a training checkpoint wrapping the weights (not a plain state dict)"
    return "an unrecognised state dict"
