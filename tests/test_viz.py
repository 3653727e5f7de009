"""Visualisations: files exist, have the promised sizes/frame counts, decode back, and show the right pixels."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from stbava.viz import (
    FIG_CELL_IN,
    FIG_DPI,
    GRID_LABEL_PX,
    GRID_PAD_PX,
    GRID_TITLE_PX,
    PRED_COLOR,
    cosine_similarity_maps,
    overlay_mask,
    save_mask_png,
    save_overlay_grid,
    save_similarity_figure,
    write_overlay_video,
)


def load_png(path):
    """(format, size, mode, pixels) of an image file, closing it."""
    with Image.open(path) as img:
        return img.format, img.size, img.mode, np.asarray(img.convert("RGB") if img.mode != "L" else img)


def clip(t=3, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((t, h, w), np.uint8)
    for i in range(t):
        masks[i, 5 + i: 20 + i, 10: 30] = 1
    return frames, masks


@pytest.mark.parametrize("with_gt, title", [(True, "clip_a"), (False, None)])
def test_overlay_grid_layout(tmp_path, with_gt, title):
    frames, masks = clip()
    path = save_overlay_grid(frames, masks if with_gt else None, masks, tmp_path / "sub" / "grid.png", title=title)
    fmt, size, _, a = load_png(path)
    cols, (t, h, w) = (3 if with_gt else 2), frames.shape[:3]
    top = (GRID_TITLE_PX if title else 0) + GRID_LABEL_PX
    assert fmt == "PNG"
    assert size == (cols * w + (cols + 1) * GRID_PAD_PX, top + t * h + (t + 1) * GRID_PAD_PX)
    x0, y1 = GRID_PAD_PX, top + 2 * GRID_PAD_PX + h  # first column, second row: the raw frame
    np.testing.assert_array_equal(a[y1: y1 + h, x0: x0 + w], frames[1])
    xp = GRID_PAD_PX + (cols - 1) * (w + GRID_PAD_PX)  # last column: prediction overlay
    np.testing.assert_array_equal(a[y1: y1 + h, xp: xp + w], overlay_mask(frames[1], masks[1]))


def test_overlay_mask_tints_only_the_mask_and_resizes():
    frames, masks = clip(t=1)
    out = overlay_mask(frames[0], masks[0])
    outside = masks[0] == 0
    np.testing.assert_array_equal(out[outside], frames[0][outside])
    assert (out[~outside] != frames[0][~outside]).any()
    assert (out[5, 10:30] == PRED_COLOR).all()  # outline row
    small = masks[0][::2, ::2]  # a mask at half resolution is upsampled to the frame
    assert overlay_mask(frames[0], small).shape == frames[0].shape


def test_similarity_maps_equal_hand_computation():
    rng = np.random.default_rng(3)
    t, h, w, c = 2, 3, 4, 5
    V = torch.from_numpy(rng.normal(size=(t, h * w, c)).astype(np.float32))
    A = torch.from_numpy(rng.normal(size=(t, c)).astype(np.float32))
    sim = cosine_similarity_maps(V, A, h, w)
    assert sim.shape == (t, h, w) and sim.dtype == np.float32
    for i in range(t):
        for y in range(h):
            for x in range(w):
                v, a = V[i, y * w + x].double().numpy(), A[i].double().numpy()
                assert sim[i, y, x] == pytest.approx(v @ a / np.linalg.norm(v) / np.linalg.norm(a), abs=1e-6)
    np.testing.assert_allclose(cosine_similarity_maps(V, A[:, None, :], h, w), sim)  # [T,1,C] accepted
    np.testing.assert_allclose(cosine_similarity_maps(V, 3 * A, h, w), sim, atol=1e-6)  # scale-free
    with pytest.raises(ValueError, match="h\\*w"):
        cosine_similarity_maps(V, A, h, w + 1)


def test_similarity_figure(tmp_path):
    frames, masks = clip(t=3, h=32, w=32)
    rng = np.random.default_rng(1)
    before, after = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    path = save_similarity_figure(frames, before, after, tmp_path / "fig.png", title="clip: similarity")
    fmt, size, _, a = load_png(path)
    assert fmt == "PNG"
    assert size == (round((FIG_CELL_IN * 3 + 0.8) * FIG_DPI), round((FIG_CELL_IN * 3 + 0.5) * FIG_DPI))
    assert a.std() > 10  # something was drawn
    four = save_similarity_figure(frames, before, after, tmp_path / "fig4.png", pred=masks)
    assert load_png(four)[1][1] == round((FIG_CELL_IN * 4 + 0.5) * FIG_DPI)
    with pytest.raises(ValueError, match="T=3"):
        save_similarity_figure(frames, before[:2], after, tmp_path / "bad.png")


def test_gif_has_one_frame_per_input(tmp_path):
    frames, masks = clip(t=4)
    path = write_overlay_video(frames, masks, tmp_path / "o.gif", fps=2)
    with Image.open(path) as img:
        assert img.n_frames == 4 and img.size == (48, 40)
        assert img.info["duration"] == 500


@pytest.mark.parametrize("h, w", [(40, 48), (37, 51)], ids=["even", "odd-padded"])
def test_mp4_decodes_to_the_same_frames(tmp_path, h, w):
    frames, masks = clip(t=5, h=h, w=w)
    frames[:] = frames[:, :1, :1]  # flat colours compress almost losslessly, so pixels can be compared
    path = write_overlay_video(frames, masks, tmp_path / "o.mp4", fps=1)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert float(s.average_rate) == pytest.approx(1.0)
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(decoded) == 5
    assert decoded[0].shape == (h + h % 2, w + w % 2, 3)
    want = overlay_mask(frames[2], masks[2]).astype(int)
    got = decoded[2][:h, :w].astype(int)
    assert np.abs(got - want)[masks[2] == 0].mean() < 8


def test_video_input_checks(tmp_path):
    frames, masks = clip(t=2)
    with pytest.raises(ValueError, match="uint8"):
        write_overlay_video(frames.astype(np.float32), masks, tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="T=2"):
        write_overlay_video(frames, masks[:1], tmp_path / "x.mp4")


def test_mask_png_roundtrip(tmp_path):
    m = np.zeros((224, 224), np.float32)
    m[50:100, 20:80] = 1
    path = save_mask_png(torch.from_numpy(m), tmp_path / "masks" / "vid_1.png")
    _, size, mode, a = load_png(path)
    assert mode == "L" and size == (224, 224)
    assert set(np.unique(a)) == {0, 255}
    np.testing.assert_array_equal(a > 0, m > 0)
    with pytest.raises(ValueError, match="binary"):
        save_mask_png(m * 0.5, tmp_path / "bad.png")
