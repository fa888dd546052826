"""Alert packets in, model-ready stamps out: readers for the real alert formats.

Formats (chosen from the file, ``fmt='auto'``):

* ZTF-like Parquet (``ztf_alert_triplets.parquet``): one row per alert, ``candid``, the
  cut-outs as gzipped FITS bytes in ``cutoutScience`` / ``cutoutTemplate`` /
  ``cutoutDifference`` (63x63, 1 arcsec/px, no WCS in the cut-out headers) and the
  candidate fields ``xpos`` / ``ypos`` (used to place truncated edge-of-CCD cut-outs).
* Rubin Parquet (``rubin_alert_triplets.parquet``): ``diaSourceId`` is the candid; the
  cut-outs are plain (not gzipped) multi-extension FITS whose primary HDU carries a WCS
  (0.2 arcsec/px), HDU 1 the variance, HDU 2 the PSF.
* Avro packets as brokers send them (a file or a directory of ``*.avro``; one file may hold
  many records): ZTF (``cutoutScience: {fileName, stampData}``), Palomar Gattini-IR
  (``cutoutScience`` raw bytes), WINTER (``cutout_science`` raw bytes).

Everything streams: :func:`iter_alert_batches` yields lists of :class:`RawAlert` (bytes,
not decoded), at most ``batch_size`` at a time; Parquet is read with
``ParquetFile.iter_batches`` and Avro record by record, so 1e5 alerts never sit in memory.
:func:`prepare_batch` decodes a batch into a (B, 3, size, size) float32 array in the
model's channel order plus one error string per alert (empty when usable).

Pixel scale of a cut-out: its WCS when the header has a celestial one, else a ``PIXSCALE``
/ ``SECPIX`` key, else the survey's nominal scale (:data:`NOMINAL_PIXEL_SCALE`), else
unknown (``unknown_pixel_scale``). A cut-out is only cropped or padded (never resampled):
when its scale differs from the model's by more than the tolerance the alert carries
``pixel_scale_mismatch``.
"""

from __future__ import annotations

import gzip
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "RawAlert", "CutoutError", "iter_alert_batches", "detect_format", "decode_cutout",
    "cutout_pixel_scale", "place_cutout", "prepare_batch", "NOMINAL_PIXEL_SCALE", "ERRORS",
]

# Nominal pixel scales (arcsec/px) of surveys whose cut-out headers carry no WCS.
NOMINAL_PIXEL_SCALE = {
    "ztf": 1.0,      # ZTF camera, 1.01"/px; alert cut-outs are 63x63 at 1"/px
    "pgir": 8.7,     # Palomar Gattini-IR
    "winter": 1.09,  # WINTER (approximate; override with alert_pixel_scale)
    "rubin": 0.2,    # LSSTCam (the cut-outs also carry a WCS)
}

ERRORS = {
    "missing_cutout": "a cut-out is absent or empty",
    "corrupt_cutout": "a cut-out is not readable gzipped/plain FITS with a 2-D image",
    "empty_cutout": "a cut-out has no finite pixel in the model's window",
    "pixel_scale_mismatch": "the cut-out's pixel scale differs from the model's beyond the tolerance",
    "unknown_pixel_scale": "no WCS, no pixel-scale key and no nominal scale for the survey",
}

CUTOUT_KINDS = ("science", "template", "difference")  # -> model channels (new, ref, sub)
_CHANNEL_OF = {"new": 0, "ref": 1, "sub": 2}  # position in CUTOUT_KINDS


class CutoutError(ValueError):
    """A cut-out that cannot be used; ``reason`` is the CSV error string."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class RawAlert:
    """One alert as read: its id, the three cut-outs' bytes (science, template, difference;
    None when absent), the survey name, and the candidate position in the cut-out when known
    (0-based x, y; None = the cut-out's centre)."""

    candid: str
    cutouts: tuple[bytes | None, bytes | None, bytes | None]
    survey: str = ""
    center_xy: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- readers

def detect_format(path: Path) -> str:
    """'ztf-parquet', 'rubin-parquet' or 'avro' for a file; ``ValueError`` otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".avro":
        return "avro"
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        names = set(pq.ParquetFile(path).schema_arrow.names)
        if "diaSourceId" in names:
            return "rubin-parquet"
        if "candid" in names:
            return "ztf-parquet"
        raise ValueError(f"{path}: Parquet file with neither 'candid' nor 'diaSourceId' column")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"Obj\x01":
        return "avro"
    if magic == b"PAR1":
        return _parquet_kind(path)
    raise ValueError(f"{path}: unknown alert format (expected .parquet or .avro)")


def _parquet_kind(path: Path) -> str:
    import pyarrow.parquet as pq
    names = set(pq.ParquetFile(path).schema_arrow.names)
    return "rubin-parquet" if "diaSourceId" in names else "ztf-parquet"


def _alert_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".avro", ".parquet", ".pq"))
        if not files:
            raise FileNotFoundError(f"{path}: no .avro or .parquet alert files in the directory")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such alert file or directory")
    return [path]


def _edge_centre(n: int, full: int, pos0: float | None) -> float:
    """Centre (0-based) of the candidate along an axis of a cut-out truncated at a CCD edge."""
    half = (full - 1) / 2.0
    if n >= full or pos0 is None or not np.isfinite(pos0):
        return (n - 1) / 2.0
    # truncated at the low edge when the candidate is within half a cut-out of pixel 0
    return float(np.floor(pos0 + 0.5)) if pos0 < half else half


def _ztf_rows(path: Path, batch_size: int) -> Iterator[RawAlert]:
    import pyarrow.parquet as pq
    # pre_buffer=False: with it pyarrow keeps every row group it read (memory grows with the file)
    pf = pq.ParquetFile(path, pre_buffer=False)
    names = set(pf.schema_arrow.names)
    cols = ["candid", "cutoutScience", "cutoutTemplate", "cutoutDifference"]
    missing = [c for c in cols if c not in names]
    if missing:
        raise ValueError(f"{path}: ZTF alert Parquet lacks columns {missing}")
    extra = [c for c in ("xpos", "ypos") if c in names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=cols + extra):
        d = batch.to_pydict()
        for i, candid in enumerate(d["candid"]):
            xy = None
            if extra:
                x, y = d["xpos"][i], d["ypos"][i]
                xy = (None if x is None else float(x) - 1.0, None if y is None else float(y) - 1.0)
            yield RawAlert(str(candid), (d["cutoutScience"][i], d["cutoutTemplate"][i],
                                         d["cutoutDifference"][i]), "ztf", None, {"ccd_xy": xy})


def _rubin_rows(path: Path, batch_size: int) -> Iterator[RawAlert]:
    import pyarrow.parquet as pq
    # pre_buffer=False: with it pyarrow keeps every row group it read (memory grows with the file)
    pf = pq.ParquetFile(path, pre_buffer=False)
    cols = ["diaSourceId", "cutoutScience", "cutoutTemplate", "cutoutDifference"]
    missing = [c for c in cols if c not in set(pf.schema_arrow.names)]
    if missing:
        raise ValueError(f"{path}: Rubin alert Parquet lacks columns {missing}")
    for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
        d = batch.to_pydict()
        for i, candid in enumerate(d["diaSourceId"]):
            yield RawAlert(str(candid), (d["cutoutScience"][i], d["cutoutTemplate"][i],
                                         d["cutoutDifference"][i]), "rubin")


def _stamp_bytes(v):
    if isinstance(v, dict):  # ZTF Avro: {"fileName": ..., "stampData": bytes}
        v = v.get("stampData")
    return v if v else None


def _avro_survey(rec: dict, schema_name: str) -> str:
    name = (schema_name or "").lower()
    publisher = str(rec.get("publisher", "")).lower()
    if "pgir" in name or "pgir" in publisher:
        return "pgir"
    if "winter" in name or "wntr" in name or "winter" in publisher:
        return "winter"
    if "ztf" in name or str(rec.get("objectId", "")).startswith("ZTF"):
        return "ztf"
    if "lsst" in name or "diaSource" in rec:
        return "rubin"
    return ""


def _avro_rows(path: Path) -> Iterator[RawAlert]:
    import fastavro
    with open(path, "rb") as fh:
        try:
            reader = fastavro.reader(fh)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable Avro container ({exc})") from exc
        schema = reader.writer_schema or {}
        schema_name = schema.get("name", "") if isinstance(schema, dict) else ""
        for rec in reader:
            survey = _avro_survey(rec, schema_name)
            if "diaSource" in rec:  # Rubin packet
                candid = rec["diaSource"].get("diaSourceId")
            else:
                candid = rec.get("candid", (rec.get("candidate") or {}).get("candid"))
            cut = []
            for kind in CUTOUT_KINDS:
                cap = kind.capitalize()
                v = rec.get(f"cutout{cap}", rec.get(f"cutout_{kind}"))
                cut.append(_stamp_bytes(v))
            cand = rec.get("candidate") or {}
            xy = None
            if survey == "ztf" and "xpos" in cand:
                xy = (float(cand["xpos"]) - 1.0, float(cand["ypos"]) - 1.0)
            yield RawAlert(str(candid), tuple(cut), survey, None, {"ccd_xy": xy})


def iter_alerts(path, fmt: str = "auto", batch_size: int = 1024) -> Iterator[RawAlert]:
    """Every alert under ``path`` (a file or a directory of files), one at a time."""
    for f in _alert_files(Path(path)):
        kind = detect_format(f) if fmt == "auto" else fmt
        if kind == "ztf-parquet":
            yield from _ztf_rows(f, batch_size)
        elif kind == "rubin-parquet":
            yield from _rubin_rows(f, batch_size)
        elif kind == "avro":
            yield from _avro_rows(f)
        else:
            raise ValueError(f"unknown alert format {kind!r} (auto, ztf-parquet, rubin-parquet, avro)")


def iter_alert_batches(path, batch_size: int = 1024, fmt: str = "auto") -> Iterator[list[RawAlert]]:
    """Lists of at most ``batch_size`` :class:`RawAlert` (bytes only; nothing decoded)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[RawAlert] = []
    for a in iter_alerts(path, fmt=fmt, batch_size=batch_size):
        batch.append(a)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------- decoding

_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _fast_primary(raw: bytes):
    """(image, cards) of a simple primary-HDU image, parsed without astropy (x10 faster on
    63x63 cut-outs); None when anything is unusual (then astropy reads it)."""
    if raw[:9] != b"SIMPLE  =":
        return None
    cards: dict[str, str] = {}
    pos = 0
    while pos + 80 <= len(raw):
        card = raw[pos:pos + 80]
        pos += 80
        key = card[:8].decode("ascii", "replace").strip()
        if key == "END":
            break
        if card[8:10] == b"= ":
            val = card[10:].decode("ascii", "replace").split("/")[0].strip()
            cards[key] = val.strip("'").strip()
    else:
        return None
    try:
        bitpix, naxis = int(cards["BITPIX"]), int(cards["NAXIS"])
        if naxis != 2 or bitpix not in _BITPIX or "BZERO" in cards or "BSCALE" in cards or "BLANK" in cards:
            return None
        nx, ny = int(cards["NAXIS1"]), int(cards["NAXIS2"])
    except (KeyError, ValueError):
        return None
    start = -(-pos // 2880) * 2880
    nbytes = nx * ny * abs(bitpix) // 8
    if nx < 1 or ny < 1 or start + nbytes > len(raw):
        return None
    img = np.frombuffer(raw, dtype=_BITPIX[bitpix], count=nx * ny, offset=start).reshape(ny, nx)
    return img.astype(np.float32), cards


def decode_cutout(data: bytes | None):
    """(image (ny, nx) float32, header) of gzipped or plain FITS bytes; CutoutError otherwise.

    The header is an astropy Header, or a dict of card strings on the fast path (simple
    primary image without WCS keys)."""
    from astropy.io import fits
    if data is None or len(data) == 0:
        raise CutoutError("missing_cutout")
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else bytes(data)
        fast = _fast_primary(raw)
        if fast is not None and "CTYPE1" not in fast[1]:
            return fast
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(raw), memmap=False) as hdul:
                for h in hdul:
                    if h.data is not None and h.is_image:
                        img = np.asarray(h.data, dtype=np.float32)
                        hdr = h.header.copy()
                        break
                else:
                    raise CutoutError("corrupt_cutout", "no image HDU")
    except CutoutError:
        raise
    except Exception as exc:  # gzip, FITS and numpy raise many types on garbage
        raise CutoutError("corrupt_cutout", f"{type(exc).__name__}: {exc}") from None
    if img.ndim != 2 or min(img.shape) < 1:
        raise CutoutError("corrupt_cutout", f"image has shape {img.shape}")
    return img, hdr


def cutout_pixel_scale(header, survey: str = "", override: float | None = None) -> float | None:
    """Pixel scale (arcsec/px): override, else the header's WCS, else PIXSCALE / SECPIX,
    else the survey's nominal scale, else None."""
    if override:
        return float(override)
    if header is not None and any(k in header for k in ("CD1_1", "PC1_1", "CDELT1")) and "CTYPE1" in header:
        try:
            from astropy.wcs import WCS
            from astropy.wcs.utils import proj_plane_pixel_scales
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = WCS(header)
            if w.has_celestial:
                s = proj_plane_pixel_scales(w.celestial) * 3600.0
                if np.all(np.isfinite(s)) and np.all(s > 0):
                    return float(np.sqrt(s[0] * s[1]))
        except Exception:
            pass
    if header is not None:
        for key in ("PIXSCALE", "SECPIX", "PIXSCAL1"):
            if key in header:
                try:
                    v = float(header[key])
                except (TypeError, ValueError):
                    continue
                if v > 0:
                    return v
    return NOMINAL_PIXEL_SCALE.get(survey.lower()) if survey else None


def place_cutout(img: np.ndarray, size: int, center: tuple[float, float] | None = None) -> np.ndarray:
    """The (size, size) window centred on ``center`` (x, y; default the image centre), padded
    with NaN where the cut-out does not reach (the model ignores non-finite pixels)."""
    ny, nx = img.shape
    cx, cy = ((nx - 1) / 2.0, (ny - 1) / 2.0) if center is None else center
    x0 = int(np.floor(cx + 0.5)) - size // 2
    y0 = int(np.floor(cy + 0.5)) - size // 2
    out = np.full((size, size), np.nan, np.float32)
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(nx, x0 + size), min(ny, y0 + size)
    if xe > xs and ye > ys:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = img[ys:ye, xs:xe]
    return out


@dataclass
class PreparedBatch:
    candid: list[str]
    stamps: np.ndarray  # (B, 3, size, size) float32, model channel order
    error: list[str]    # "" when stamps[i] is usable
    pixel_scale: list[float | None]


def prepare_batch(alerts: list[RawAlert], *, size: int = 29, channels=("new", "ref", "sub"),
                  model_pixel_scale: float | None = None, tolerance: float = 0.1,
                  alert_pixel_scale: float | None = None, full_size: int | None = 63) -> PreparedBatch:
    """Decode and place the cut-outs of a batch in the model's input layout.

    ``channels``: the model's channel names (model.json input.channels), mapped science ->
    new, template -> ref, difference -> sub. ``tolerance``: allowed relative difference of
    the pixel scales (``None`` model scale: not checked). ``full_size``: the survey's full
    cut-out side (ZTF 63), used to place edge-of-CCD cut-outs truncated by the CCD border.
    """
    order = [_CHANNEL_OF[c] for c in channels]
    stamps = np.full((len(alerts), len(order), size, size), np.nan, np.float32)
    errors: list[str] = []
    scales: list[float | None] = []
    for i, a in enumerate(alerts):
        err, scale = "", None
        try:
            imgs = [decode_cutout(a.cutouts[k]) for k in range(3)]
            scale = cutout_pixel_scale(imgs[0][1], a.survey, alert_pixel_scale)
            if model_pixel_scale is not None:
                if scale is None:
                    raise CutoutError("unknown_pixel_scale")
                if abs(scale / model_pixel_scale - 1.0) > tolerance:
                    raise CutoutError("pixel_scale_mismatch", f"{scale:.3g} vs {model_pixel_scale:.3g}")
            for ch, k in enumerate(order):
                img = imgs[k][0]
                centre = a.center_xy
                ccd = a.extra.get("ccd_xy") if a.extra else None
                if centre is None and full_size and ccd is not None and (img.shape[0] < full_size or img.shape[1] < full_size):
                    centre = (_edge_centre(img.shape[1], full_size, ccd[0]),
                              _edge_centre(img.shape[0], full_size, ccd[1]))
                stamps[i, ch] = place_cutout(img, size, centre)
                if not np.isfinite(stamps[i, ch]).any():
                    raise CutoutError("empty_cutout", CUTOUT_KINDS[k])
        except CutoutError as e:
            err = e.reason
            stamps[i] = np.nan
        errors.append(err)
        scales.append(scale)
    return PreparedBatch([a.candid for a in alerts], stamps, errors, scales)
