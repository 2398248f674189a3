"""Video frames in and out through OpenCV (an optional dependency: opencv-python-headless)."""
from __future__ import annotations


def frame_files(folder) -> list[str]:
    """A folder of frames: its image files, sorted by name (frame i is the i-th)."""
    import os
    from .inputs import IMAGE_EXTS
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if os.path.splitext(n)[1].lower() in IMAGE_EXTS]


def video_frames(path):
    """(frames: iterator of (index, (H, W, 3) uint8 RGB), fps, count or 0) of a video file or of a
    folder of frames (``frame_files``; 25 fps)."""
    import os
    if os.path.isdir(path):
        from .pipeline import load_image
        files = frame_files(path)
        if not files:
            raise ValueError(f"no image files in the folder {path}")
        return ((i, load_image(f).permute(1, 2, 0).numpy()) for i, f in enumerate(files)), 25.0, len(files)
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
    import os
    if os.path.isdir(path):
        return len(frame_files(path))
    try:
        import cv2
        cap = cv2.VideoCapture(path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        return n
    except Exception:
        return 0


def video_fps(path, default: float = 25.0) -> float:
    """Frames per second of a video file (``default`` when unknown, e.g. a folder of frames)."""
    import os
    if os.path.isdir(path):
        return default
    try:
        import cv2
        cap = cv2.VideoCapture(path)
        fps = cap.get(cv2.CAP_PROP_FPS) or default
        cap.release()
        return fps
    except Exception:
        return default
