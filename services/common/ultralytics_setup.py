"""Import ultralytics safely: offline, without side effects on untrusted-image decoding.

ultralytics reads its environment once, at import: ``YOLO_OFFLINE`` stops its online probes,
``YOLO_AUTOINSTALL=0`` stops it pip-installing missing packages, and ``YOLO_CONFIG_DIR`` is
where it keeps settings and looks for the ``Arial.ttf`` it draws labels with (without that
file, training tries to download one). Importing it also replaces ``PIL.Image.open``
process-wide with a wrapper that, on any unidentifiable file, tries to install and import
``pi-heif``: in a service that decodes untrusted uploads, garbage bytes would then raise
ModuleNotFoundError (a 500) or trigger a pip install. :func:`import_ultralytics` undoes that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from PIL import Image

from services.common.settings import boig_home

logger = logging.getLogger(__name__)

_FONT_NAME = "Arial.ttf"
# Any TTF serves: ultralytics only draws label text with it. matplotlib (an ultralytics
# dependency) ships DejaVuSans; the system paths are fallbacks for slim images.
_SYSTEM_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)


def prepare_ultralytics_environment() -> Path:
    """Set the offline variables (where not set already) and put a font where ultralytics looks.

    Returns the ultralytics settings directory (``$YOLO_CONFIG_DIR/Ultralytics``). Idempotent
    and cheap; it does not import ultralytics. Should ultralytics already be imported, the
    variables can no longer take effect, so the font goes to the directory it chose instead.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config_dir = os.environ.setdefault("YOLO_CONFIG_DIR", str(boig_home() / "ultralytics"))
    settings_dir = Path(config_dir).expanduser() / "Ultralytics"
    utils = sys.modules.get("ultralytics.utils")
    if utils is not None:
        settings_dir = Path(utils.USER_CONFIG_DIR)
    _ensure_font(settings_dir / _FONT_NAME)
    return settings_dir


def _ensure_font(font: Path) -> None:
    if font.is_file():
        return
    source = _find_font()
    if source is None:
        logger.warning(
            "no TTF font found to place at %s; ultralytics may try to download one", font
        )
        return
    font.parent.mkdir(parents=True, exist_ok=True)
    # Copy under a private name, then rename: a concurrent reader never sees half a font.
    partial = font.with_name(f".{_FONT_NAME}.{os.getpid()}.tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, font)


def _find_font() -> Path | None:
    candidates: list[Path] = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(
            Path(location) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
            for location in spec.submodule_search_locations
        )
    candidates.extend(Path(path) for path in _SYSTEM_FONTS)
    return next((path for path in candidates if path.is_file()), None)


def import_ultralytics() -> ModuleType:
    """``import ultralytics`` after preparing its environment, with ``PIL.Image.open`` restored."""
    prepare_ultralytics_environment()
    import ultralytics
    from ultralytics import YOLO  # type: ignore[attr-defined]  # noqa: F401  # lazy import, before the restore

    _restore_pil_open()
    return ultralytics


def _restore_pil_open() -> None:
    try:
        from ultralytics.utils import patches
    except ImportError:
        return
    original = getattr(patches, "_image_open", None)
    # Only undo ultralytics' own wrapper; leave anything else that patched Image.open alone.
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original
