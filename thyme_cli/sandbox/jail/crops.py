"""Where the model looked: every crop of the input image, recorded inside the jail.

PIL, numpy and cv2 are patched once per process to mark the input image and log crops of it in
input-image pixels; the objects the code gets back are unchanged (docs/sandbox.md, "Design notes").
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

MAX_CROPS_PER_STEP = 64
ORIGIN = "_thyme_origin"  # (x offset, y offset, x scale, y scale): own pixel -> input-image pixel

Origin = tuple[float, float, float, float]
IDENTITY: Origin = (0.0, 0.0, 1.0, 1.0)


class CropLog:
    """The boxes of the current step, in input-image pixels, clipped to the image."""

    def __init__(self, image_path: str) -> None:
        self.image_path = os.path.realpath(image_path)
        self.size: tuple[int, int] | None = None  # the input image's (width, height), once seen
        self.boxes: list[dict[str, Any]] = []

    def is_input(self, source: Any) -> bool:
        name = source if isinstance(source, str | os.PathLike) else getattr(source, "name", None)
        if not isinstance(name, str | os.PathLike):
            return False
        try:
            return os.path.realpath(os.fspath(name)) == self.image_path
        except (TypeError, ValueError, OSError):
            return False

    def add(self, origin: Origin, x0: float, y0: float, x1: float, y1: float, via: str) -> None:
        ox, oy, sx, sy = origin
        box = [ox + x0 * sx, oy + y0 * sy, ox + x1 * sx, oy + y1 * sy]
        if not all(math.isfinite(v) for v in box):
            return
        left, right = sorted((box[0], box[2]))
        top, bottom = sorted((box[1], box[3]))
        if self.size is not None:
            w, h = self.size
            left, right = min(max(left, 0.0), w), min(max(right, 0.0), w)
            top, bottom = min(max(top, 0.0), h), min(max(bottom, 0.0), h)
        if right - left < 1 or bottom - top < 1:
            return
        entry = {"box": [round(left), round(top), round(right), round(bottom)], "via": via}
        if len(self.boxes) < MAX_CROPS_PER_STEP and (not self.boxes or self.boxes[-1] != entry):
            self.boxes.append(entry)

    def take(self) -> list[dict[str, Any]]:
        boxes, self.boxes = self.boxes, []
        return boxes


_LOG: CropLog | None = None


def origin_of(obj: Any) -> Origin | None:
    value = getattr(obj, ORIGIN, None)
    return value if isinstance(value, tuple) and len(value) == 4 else None


def _mark(obj: Any, origin: Origin | None) -> Any:
    if origin is not None:
        with contextlib.suppress(AttributeError, TypeError):
            setattr(obj, ORIGIN, origin)
    return obj


def install(image_path: str, modules: dict[str, Any]) -> CropLog:
    """Start recording crops of IMAGE_PATH (patches PIL, numpy and cv2 once per process)."""
    global _LOG
    if _LOG is not None:
        _LOG.__init__(image_path)  # type: ignore[misc]  # a new question in the same process
        return _LOG
    _LOG = log = CropLog(image_path)
    image_module, np, cv2 = modules.get("Image"), modules.get("np"), modules.get("cv2")
    if image_module is not None:
        _patch_pil(image_module, log)
    if np is not None:
        tracked = _tracked_array_class(np, log)
        _patch_numpy(np, image_module, tracked)
        if cv2 is not None:
            _patch_cv2(cv2, tracked, log)
    return log


def _patch_pil(image_module: Any, log: CropLog) -> None:
    """Image.open marks the input; crop logs and marks, resize rescales, the rest keep the mark."""
    base = image_module.Image
    keeps = {name: getattr(base, name) for name in ("copy", "convert", "filter", "point")}
    image_module.open = _marking_open(image_module.open, log)
    base.crop, base.resize = _logging_crop(base.crop, log), _scaling_resize(base.resize)
    for name, plain in keeps.items():
        setattr(base, name, _keeping(plain))


def _marking_open(plain_open: Any, log: CropLog) -> Any:
    def open_(fp: Any, *args: Any, **kwargs: Any) -> Any:
        img = plain_open(fp, *args, **kwargs)
        if log.is_input(fp):
            log.size = img.size
            _mark(img, IDENTITY)
        return img

    return open_


def _logging_crop(plain_crop: Any, log: CropLog) -> Any:
    def crop(self: Any, box: Any = None) -> Any:
        out = plain_crop(self, box)
        origin = origin_of(self)
        if origin is not None and box is not None:
            try:
                x0, y0, x1, y1 = (float(v) for v in box)
            except (TypeError, ValueError):
                return out
            log.add(origin, x0, y0, x1, y1, "pil")
            ox, oy, sx, sy = origin
            _mark(out, (ox + x0 * sx, oy + y0 * sy, sx, sy))
        return out

    crop.__doc__ = plain_crop.__doc__
    return crop


def _scaling_resize(plain_resize: Any) -> Any:
    def resize(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = plain_resize(self, *args, **kwargs)
        origin = origin_of(self)
        if origin is not None and out.width and out.height:
            ox, oy, sx, sy = origin
            _mark(out, (ox, oy, sx * self.width / out.width, sy * self.height / out.height))
        return out

    resize.__doc__ = plain_resize.__doc__
    return resize


def _keeping(plain: Any) -> Any:
    """A geometry-keeping method: the result keeps the mark when its size is unchanged."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = plain(self, *args, **kwargs)
        if getattr(out, "size", None) == self.size:
            _mark(out, origin_of(self))
        return out

    method.__name__, method.__doc__ = plain.__name__, plain.__doc__
    return method


def _slice_box(key: Any, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) when KEY slices the first two axes with step 1 (rows only counts too)."""
    if isinstance(key, slice):
        key = (key,)
    if not isinstance(key, tuple) or not key or len(shape) < 2:
        return None
    rows = key[0]
    cols = key[1] if len(key) > 1 else slice(None)
    if not (isinstance(rows, slice) and isinstance(cols, slice)) or Ellipsis in key[:2]:
        return None
    if rows.step not in (None, 1) or cols.step not in (None, 1):
        return None
    try:
        y0, y1, _ = rows.indices(shape[0])
        x0, x1, _ = cols.indices(shape[1])
    except (TypeError, ValueError):
        return None
    return y0, y1, x0, x1


def _tracked_array_class(np: Any, log: CropLog) -> Any:
    class TrackedArray(np.ndarray):
        """An image array that knows where it sits in the input image."""

        _thyme_origin: Origin | None = None

        def __array_finalize__(self, obj: Any) -> None:
            origin = origin_of(obj)
            same = origin is not None and getattr(obj, "shape", ())[:2] == self.shape[:2] and self.ndim >= 2
            self._thyme_origin = origin if same else None

        def __getitem__(self, key: Any) -> Any:
            out = super().__getitem__(key)
            origin = self._thyme_origin
            if origin is None or not isinstance(out, np.ndarray) or out.ndim < 2:
                return out
            box = _slice_box(key, self.shape)
            if box is None:
                return out
            y0, y1, x0, x1 = box
            if (y0, y1, x0, x1) == (0, self.shape[0], 0, self.shape[1]):
                return out
            log.add(origin, x0, y0, x1, y1, "numpy")
            ox, oy, sx, sy = origin
            out._thyme_origin = (ox + x0 * sx, oy + y0 * sy, sx, sy)
            return out

        def __repr__(self) -> str:
            return repr(self.view(np.ndarray))

    return TrackedArray


def track(array: Any, origin: Origin | None, tracked: Any) -> Any:
    if origin is None or array is None or getattr(array, "ndim", 0) < 2:
        return array
    out = array.view(tracked)
    out._thyme_origin = origin
    return out


def _patch_numpy(np: Any, image_module: Any, tracked: Any) -> None:
    pil_image = image_module.Image if image_module is not None else None

    def wrap(plain: Any) -> Any:
        def convert(*args: Any, **kwargs: Any) -> Any:
            out = plain(*args, **kwargs)
            obj = args[0] if args else kwargs.get("object", kwargs.get("a"))
            if pil_image is not None and isinstance(obj, pil_image):
                origin = origin_of(obj)
                if origin is not None and isinstance(out, np.ndarray) and out.shape[:2] == obj.size[::-1]:
                    return track(out, origin, tracked)
            return out

        convert.__name__, convert.__doc__ = plain.__name__, plain.__doc__
        return convert

    np.array, np.asarray = wrap(np.array), wrap(np.asarray)
    if image_module is not None:
        plain_fromarray = image_module.fromarray

        def fromarray(obj: Any, *args: Any, **kwargs: Any) -> Any:
            img = plain_fromarray(obj, *args, **kwargs)
            origin = origin_of(obj)
            return _mark(img, origin) if origin is not None and img.size == obj.shape[1::-1][:2] else img

        image_module.fromarray = fromarray


def _patch_cv2(cv2: Any, tracked: Any, log: CropLog) -> None:
    plain_imread, plain_cvt = cv2.imread, cv2.cvtColor

    def imread(filename: Any, *args: Any, **kwargs: Any) -> Any:
        out = plain_imread(filename, *args, **kwargs)
        if out is not None and log.is_input(filename):
            log.size = (int(out.shape[1]), int(out.shape[0]))
            return track(out, IDENTITY, tracked)
        return out

    def cvt_color(src: Any, *args: Any, **kwargs: Any) -> Any:
        out = plain_cvt(src, *args, **kwargs)
        origin = origin_of(src)
        if origin is not None and getattr(out, "shape", ())[:2] == src.shape[:2]:
            return track(out, origin, tracked)
        return out

    cv2.imread, cv2.cvtColor = imread, cvt_color
