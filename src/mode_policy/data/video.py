"""Video files of datasets and evaluation videos: one encoder (with codec fallback), one decoder.

:class:`VideoEncoder` streams frames into one mp4 (episodes of a dataset camera are
appended to it); :func:`write_mp4` writes a whole clip atomically (evaluation videos).
The codec is libx264 when the av build has it, else mpeg4.
:func:`decode_video_segment` reads the frames of one episode back from a dataset video.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import DataNotFoundError, SimulatorError
from ..fileio import atomic_write
from .metadata import LeRobotFormatError


def pick_video_codec() -> str:
    """The best mp4 encoder this av build has: libx264, else mpeg4."""
    for name in ("libx264", "mpeg4"):
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec missing from this av build
            continue
    raise SimulatorError("the installed av has neither a libx264 nor an mpeg4 encoder")


class VideoEncoder:
    """One open mp4 that consecutive episodes of one camera are appended to."""

    def __init__(
        self, path: Path, fps: int, height: int, width: int, codec: str, crf: int, gop: int, format: str | None = None
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0  # frames written so far; the next episode starts at frames / fps seconds
        self._fps = fps
        self._container = av.open(str(path), "w", format=format)
        options = {"g": str(gop)}
        if codec == "mpeg4":  # no crf: bound the quantiser instead
            options |= {"qmin": "1", "qmax": "3"}
        else:
            options["crf"] = str(crf)
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.width, self._stream.height = width, height
        # 4:2:0 needs even sizes; x264 can fall back to 4:4:4
        self._stream.pix_fmt = "yuv420p" if (width % 2 == 0 and height % 2 == 0) or codec != "libx264" else "yuv444p"
        self.pix_fmt = self._stream.pix_fmt

    def write(self, images: np.ndarray) -> None:
        """Append uint8 (T, H, W, 3) frames."""
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            frame.time_base = Fraction(1, self._fps)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """Write uint8 (H, W, 3) ``frames`` as one mp4 at ``path`` (temporary file, then rename)."""
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    height, width = frames[0].shape[:2]

    def write(tmp: str) -> None:
        encoder = VideoEncoder(Path(tmp), fps, height, width, pick_video_codec(), crf=23, gop=2 * fps, format="mp4")
        try:
            encoder.write(np.stack(frames))
        finally:
            encoder.close()

    return atomic_write(path, write)


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream, counter: int, fps: float) -> float:
    if frame.time is not None:
        return float(frame.time)
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base)
    return counter / fps


def _decode_range(path: Path, lo: float, hi: float, fps: float, seek: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decode the frames of ``path`` whose time lies in [lo, hi]: times (K,), images K x (H, W, 3)."""
    times: list[float] = []
    images: list[np.ndarray] = []
    # One reformatter for all frames: frame.to_ndarray(format=...) builds a new swscale
    # context per frame, which costs ~5 ms even for a 64 x 64 frame (PyAV 18).
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise LeRobotFormatError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if seek and lo > 0 and stream.time_base is not None:
                container.seek(int(lo / stream.time_base), stream=stream, backward=True, any_frame=False)
            for k, frame in enumerate(container.decode(stream)):
                t = _frame_time(frame, stream, k, fps)
                if t > hi:
                    break
                if t >= lo:
                    times.append(t)
                    images.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
    except av.error.FFmpegError as e:
        raise LeRobotFormatError(f"{path}: cannot decode video ({e})") from None
    return np.asarray(times, dtype=np.float64), images


def decode_video_segment(path: Path, timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Frames of ``path`` nearest to ``timestamps`` (seconds in the file), uint8 (T, H, W, 3).

    Like LeRobot, each requested time takes the closest decoded frame; a gap
    larger than 0.4 frame periods is an error naming the file."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: video file not found")
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.size == 0:
        raise LeRobotFormatError(f"{path}: no timestamps requested")
    tol = 0.4 / fps
    lo, hi = float(timestamps.min()) - tol, float(timestamps.max()) + tol
    for seek in (True, False):  # an inexact seek falls back to decoding from the start
        times, images = _decode_range(path, lo, hi, fps, seek)
        if len(times):
            nearest = np.abs(times[None, :] - timestamps[:, None]).argmin(axis=1)  # (T,)
            if np.all(np.abs(times[nearest] - timestamps) <= tol):
                return np.stack([images[j] for j in nearest])
    raise LeRobotFormatError(
        f"{path}: no frame within {tol:.4f}s of the requested times {timestamps.min():.4f}..{timestamps.max():.4f}s "
        f"({len(times)} frames decoded there); the video and the episode metadata disagree"
    )
