"""An MP4 written chunk by chunk that reaches its path only when complete.

Frames go to a hidden partial file beside the target as they are decoded; `close()` finishes the encoder and only
then renames the partial file onto the target. Leaving the with-block on an error (or `abort()`) deletes it: a
file at the target path is always a whole, finished video.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class StreamingVideoWriter:
    """`with StreamingVideoWriter(path, fps) as video: video.append(frames)`; frames (F, H, W, 3) uint8."""

    def __init__(self, path: Path, fps: int):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames_written = 0
        self._writer = imageio.get_writer(self.partial, fps=fps, codec="libx264", quality=8, macro_block_size=16)

    def append(self, frames: np.ndarray) -> None:
        for frame in frames:
            self._writer.append_data(frame)
        self.frames_written += len(frames)

    def close(self) -> None:
        """Finish the file, then rename it onto the target; a failure in either leaves no file behind."""
        try:
            self._writer.close()
            if self.frames_written == 0:
                raise ValueError(f"no frames were written to {self.path}")
            os.replace(self.partial, self.path)
        finally:
            self.partial.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> StreamingVideoWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self.abort()
