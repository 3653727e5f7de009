"""``stbava app``: a local web app (Gradio) over the same predict code as ``stbava predict``.

Pick an example or upload a video, press *Segment*; the page shows the overlay video (with the input's
sound), the per-second masks, and offers the masks + ``summary.json`` as one zip. The model is restored
once at start; every request runs :func:`stbava.pipeline.predict.run.predict_one` into its own folder
under the work dir. The work dir is the app's own (a new temporary folder, or a new folder inside
``--work-dir``) and is removed when the app closes (``close()``, the end of a blocking launch, or at the
latest when the process exits). Needs the optional extra: ``pip install "stbava[app]"``.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from stbava.data.clips import DataError
from stbava.data.media import folder_videos
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.predict.run import PredictOptions, predict_one
from stbava.pipeline.predict.windows import Predictor, load_predictor

log = logging.getLogger(__name__)

API_NAME = "segment"  # the endpoint Gradio's client calls: Client(url).predict(..., api_name="/segment")
STRIDES = ["1", "0.5", "0.25", "0.2"]


def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError:
        raise DataError('stbava app needs Gradio: pip install "stbava[app]" (or make setup)') from None
    return gr


def segment(pred: Predictor, work: Path, video: str | None, stride: str = "1", start: float = 0.0,
            duration: float = 0.0) -> tuple[str, list[tuple[str, str]], str]:
    """One request: (overlay mp4, [(mask png, caption)] per second, zip of masks + summary.json)."""
    if not video:
        raise DataError("pick or upload a video first")
    out = work / uuid.uuid4().hex[:12]
    opts = PredictOptions(start=float(start or 0), duration=float(duration) if duration else None,
                          temporal_stride=float(stride), progress=False)
    summary = predict_one(pred, video, out, opts)
    stem = Path(video).stem
    gallery = [(str(out / "masks" / f"{stem}_{r['second'] + 1}.png"),
                f"{r['second']}-{r['second'] + 1} s: {100 * r['foreground_fraction']:.0f} % sounding")
               for r in summary["per_second"]]
    shutil.copy(out / "summary.json", out / "masks" / "summary.json")
    archive = shutil.make_archive(str(out / f"{stem}_masks"), "zip", out / "masks")
    return summary["overlay"], gallery, archive


def build_app(pred: Predictor, work: Path, examples: list[Path] | None = None) -> Any:
    """The Gradio Blocks page (not launched)."""
    gr = _gradio()

    def run(video: str | None, stride: str, start: float, duration: float) -> tuple[str, list, str]:
        try:
            return segment(pred, work, video, stride, start, duration)
        except DataError as e:  # shown in the page, not as a server traceback
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="stbava: who is sounding?", analytics_enabled=False) as app:
        gr.Markdown("## stbava: segment the sounding objects of a video\nUpload a video with sound (or pick an "
                    "example) and press **Segment**. Orange tint and outline: where the model hears the sound "
                    "coming from (probability > 0.5), one mask per second (or per stride).")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="input video", sources=["upload"], format=None)
                with gr.Row():
                    stride = gr.Dropdown(STRIDES, value="1", label="seconds between masks")
                    start = gr.Number(0, label="start (s)", minimum=0)
                    duration = gr.Number(0, label="duration (s, 0 = to the end)", minimum=0)
                button = gr.Button("Segment", variant="primary")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[video], label="examples",
                                example_labels=[p.name for p in examples])
            with gr.Column():
                overlay = gr.Video(label="overlay (with sound)", format=None, autoplay=False)
                masks = gr.Gallery(label="masks, one per second", columns=5, height="auto")
                download = gr.File(label="download: masks + summary.json (zip)")
        button.click(run, [video, stride, start, duration], [overlay, masks, download], api_name=API_NAME)
    return app


class WorkDir:
    """The app's own folder for the requests' outputs: created at start, removed once by :meth:`remove`.

    A new folder inside ``parent`` (a user's ``--work-dir`` is kept; only what the app made is removed), or a
    new temporary folder. Also removed when the process exits, should the app never be closed.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="stbava_app_", dir=parent))
        atexit.register(self.remove)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        atexit.unregister(self.remove)


def _clean_on_close(app: Any, work: WorkDir) -> None:
    """Make ``app.close()`` also remove the work dir (after the server has stopped)."""
    close = app.close

    def close_and_clean(*args: Any, **kwargs: Any) -> None:
        try:
            close(*args, **kwargs)
        finally:
            work.remove()

    app.close = close_and_clean


def launch_app(checkpoint: str | Path, *, port: int = 7860, host: str = "127.0.0.1", examples: str | Path | None = None,
               work_dir: str | Path | None = None, device: str = "auto", search: WeightSearch | None = None,
               block: bool = True) -> Any:
    """Restore the checkpoint once and serve the app on ``host:port`` (127.0.0.1: this machine only).

    Returns the launched Blocks (``block=False`` returns right after start; call ``.close()`` to stop). The
    work dir (:class:`WorkDir`) is removed when ``.close()`` is called, or when a blocking launch returns.
    """
    pred = load_predictor(checkpoint, search=search, device=device)
    work = WorkDir(work_dir)
    try:
        app = build_app(pred, work.path, folder_videos(examples) if examples else None)
        _clean_on_close(app, work)
        allowed = [str(work.path)] + ([str(Path(examples).resolve())] if examples else [])
        app.queue(default_concurrency_limit=1)  # one model, one request at a time
        app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, allowed_paths=allowed,
                   show_error=True, quiet=not block)
    except BaseException:
        work.remove()
        raise
    if block:  # the server has stopped (Ctrl-C)
        work.remove()
    return app
