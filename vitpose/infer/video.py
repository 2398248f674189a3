"""Video frames in and out through OpenCV (an optional dependency: opencv-python-headless)."""
from __future__ import annotations


def video_frames(path):
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError("video input needs OpenCV: pip install opencv-python-headless") from e
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"could not open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def frames():
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            cap.release()

    return frames(), fps, total


class VideoWriter:
    def __init__(self, path, fps):
        self.path, self.fps, self.writer = path, fps, None

    def write(self, rgb):
        import cv2
        if self.writer is None:
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self):
        if self.writer is not None:
            self.writer.release()


def frame_count(path) -> int:
    try:
        import cv2
        cap = cv2.VideoCapture(path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        return n
    except Exception:
        return 0
