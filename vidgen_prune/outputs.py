"""Output files that are complete and correct, or absent: every file the package writes goes through `atomic_files`.

Each file of a group is written under a partial name unique to this process (`.clip.<host>.4242.partial.mp4`, beside its
final path), flushed to disk, and all are renamed into place only once every one of them is complete; on any failure
every partial is removed and nothing reaches a final path. A write that fails (a full or read-only disk, a folder
without permission, a path under /proc) becomes one OutputError naming the file. An MP4 is complete only when ffmpeg
exited cleanly and the file decodes back to the frame count and size it was given.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import socket
import subprocess
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import numpy as np

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"  # a file-name-safe host name
H264_CRF = 10  # what imageio's quality=8 gave before (crf = (1 − 8/10) · 51): near-lossless at tiny sizes


class OutputError(RuntimeError):
    """A file could not be written completely; nothing was left at its path."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = Path(path), reason


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is complete: hidden, beside it, unique to this process on this host (two
    runs on one folder never share one), with the same suffix so that tools which read the format from it still can."""
    return path.with_name(f".{path.stem}.{_HOST}.{os.getpid()}.partial{path.suffix}")


def remove_stale_partials(path: Path) -> None:
    """Remove the partials of `path` that killed processes of this host left (SIGKILL runs no cleanup); a live
    process's partial, or another host's, is never touched."""
    name = re.compile(rf"\.{re.escape(path.stem)}\.{re.escape(_HOST)}\.(\d+)\.partial{re.escape(path.suffix)}")
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*.partial{glob.escape(path.suffix)}"):
        match = name.fullmatch(candidate.name)
        if match and not _alive(int(match[1])):
            _remove(candidate)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextmanager
def atomic_files(*paths: Path | str) -> Iterator[tuple[Path, ...]]:
    """Partial paths for `paths`, to write inside the block; when it ends without error each is flushed to disk and
    renamed onto its path, in the order given (a sidecar last: it marks the group complete). On any error none is
    renamed (or a rename half-done is undone), every partial is removed, and an OSError becomes an OutputError."""
    finals = tuple(Path(path) for path in paths)
    partials = tuple(partial_path(path) for path in finals)
    final_of = dict(zip(partials, finals))
    renamed: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(final)
        yield partials
        for partial in partials:
            _flush_to_disk(partial)
        for partial, final in zip(partials, finals):
            os.replace(partial, final)
            renamed.append(final)
    except OutputError as error:
        raise OutputError(final_of.get(error.path, error.path), error.reason) from error
    except OSError as error:
        for final in renamed:
            _remove(final)
        where = final_of.get(Path(error.filename), error.filename) if error.filename else " + ".join(map(str, finals))
        raise OutputError(where, error.strerror or str(error)) from error
    finally:
        for partial in partials:
            _remove(partial)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name `path` in an OSError raised while writing it: errors of write() and close() carry no file name."""
    try:
        yield
    except OSError as error:
        raise OutputError(path, error.strerror or str(error)) from error


def save_png(figure, path: Path, dpi: int) -> None:
    """Write a matplotlib figure to `path` as PNG (an OSError names the path) and close it, written or not."""
    import matplotlib.pyplot as plt

    try:
        with writing(path):
            figure.savefig(path, format="png", dpi=dpi)
    finally:
        plt.close(figure)


def _flush_to_disk(path: Path) -> None:
    """fsync: some filesystems (NFS, delayed allocation) report a full disk only here, not at write()."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    with suppress(OSError):  # a partial on a disk that turned read-only cannot be removed; the error is already told
        path.unlink(missing_ok=True)


def check_writable(*paths: Path | str) -> None:
    """Refuse (ValueError), before any compute, an output path that is a folder or whose nearest existing folder does
    not take a new file. The folder is probed by creating and removing a file: permission bits say nothing to root,
    nor about read-only mounts or /proc."""
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(f"output path is a folder: {path}")
        folder = path.resolve().parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ValueError(f"output folder is not writable: {path.parent} ({folder} is a file)")
        probe = folder / f".vidprune-probe.{os.getpid()}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600))
            probe.unlink()
        except OSError as error:
            raise ValueError(f"output folder is not writable: {folder} ({error.strerror})") from None


# ----------------------------------------------------------------------------------------------------- writers


def write_json(data: dict, path: Path, allow_nan: bool = False) -> None:
    """`data` as indented JSON, atomically. NaN and Infinity are not JSON, so they are refused unless asked for."""
    with atomic_files(path) as (partial,):
        write_json_to(data, partial, allow_nan)


def write_json_to(data: dict, path: Path, allow_nan: bool = False) -> None:
    """The plain write, for a path `atomic_files` handed out."""
    text = json.dumps(data, indent=2, default=str, allow_nan=allow_nan) + "\n"
    with writing(path):
        path.write_text(text)


def write_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """frames (F, H, W, 3) uint8 as an H.264 MP4, atomically and verified (`encode_mp4`)."""
    with atomic_files(path) as (partial,):
        encode_mp4(frames, partial, fps)


def write_video_with_sidecar(frames: np.ndarray, path: Path, fps: int, sidecar: dict) -> None:
    """The MP4 and its JSON sidecar (`path` with .json) as one group: both reach their paths or neither does."""
    with atomic_files(path, path.with_suffix(".json")) as (video_partial, sidecar_partial):
        write_json_to(sidecar, sidecar_partial)
        encode_mp4(frames, video_partial, fps)


def encode_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """frames (F, H, W, 3) uint8 → a verified H.264 MP4 at `path` (see `Mp4Encoder`)."""
    with Mp4Encoder(path, fps) as encoder:
        encoder.append(frames)


class Mp4Encoder:
    """H.264 (yuv420p) MP4 at `path`, fed frames as they come (a causal generation appends chunk by chunk); when the
    block ends it is decoded back: OutputError unless ffmpeg exited cleanly and the file holds every frame given at
    its size. (imageio's writer ignores ffmpeg's exit status: on a full disk it left a truncated file behind
    "Error writing trailer: No space left on device".) Write it to a path `atomic_files` handed out."""

    def __init__(self, path: Path, fps: int):
        self.path, self.fps = Path(path), fps
        self.count, self.size, self._process = 0, None, None

    def append(self, frames: np.ndarray) -> None:
        """frames (F, H, W, 3) uint8 with even H and W, the same size every time."""
        count, height, width, channels = frames.shape
        if channels != 3 or frames.dtype != np.uint8 or height % 2 or width % 2 or self.size not in (None, (height,
                                                                                                           width)):
            raise ValueError(f"an MP4 takes (F, H, W, 3) uint8 frames of one even H and W, got {frames.shape} "
                             f"{frames.dtype}")
        if self._process is None:
            import imageio_ffmpeg

            self.size = (height, width)
            self._process = subprocess.Popen(
                [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                 f"{width}x{height}", "-r", str(self.fps), "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                 "-crf", str(H264_CRF), "-f", "mp4", str(self.path)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        try:
            self._process.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            self.finish()  # ffmpeg stopped: its own message says why
        self.count += count

    def finish(self) -> None:
        if self._process is None:
            raise OutputError(self.path, "no frames to write")
        with suppress(BrokenPipeError):
            self._process.stdin.close()
        stderr = self._process.stderr.read()
        if self._process.wait() != 0:
            raise OutputError(self.path, f"ffmpeg: {_ffmpeg_reason(stderr)}")
        height, width = self.size
        ffmpeg = self._process.args[0]
        decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(self.path), "-f", "rawvideo", "-pix_fmt", "rgb24",
                                  "-"], capture_output=True)
        got = len(decoded.stdout) / (height * width * 3)
        if decoded.returncode != 0 or decoded.stderr.strip() or got != self.count:
            problem = _ffmpeg_reason(decoded.stderr) if decoded.stderr.strip() else f"{got:g} of {self.count} frames"
            raise OutputError(self.path, f"the written MP4 does not decode ({problem})")

    def __enter__(self) -> Mp4Encoder:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.finish()
        elif self._process is not None:
            self._process.kill()
            self._process.wait()


def _ffmpeg_reason(stderr: bytes) -> str:
    """Why ffmpeg failed, in a few words: the operating system's error when it names one ("No space left on
    device", which it follows with lines about empty streams), else its first message without the
    `[component @ 0x...]` prefix."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line.strip()) for line in stderr.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        for reason in _OS_ERRORS:
            if line.endswith(reason):
                return reason
    return lines[0] if lines else "failed without a message"


_OS_ERRORS = sorted({os.strerror(code) for code in errno.errorcode}, key=len, reverse=True)
