"""FITS image I/O at the edges: atomic writes, checked reads, header -> ImageMeta / WCS."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning
from pydantic import BaseModel, ConfigDict, Field

from tasks.types import ImageMeta

__all__ = ["HeaderKeys", "write_image_fits", "read_image_fits", "image_meta_from_header", "wcs_from_header"]


class HeaderKeys(BaseModel):
    """Names of the header keys a survey uses (defaults: those the simulation writes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exposure: str = Field("EXPOSURE", description="Exposure id.")
    sensor: str = Field("SENSOR", description="Sensor (CCD/CMOS chip) id.")
    night: str = Field("NIGHT", description="Night, YYYY-MM-DD.")
    mjd: str = Field("MJD-OBS", description="MJD of the exposure start.")
    gain: str = Field("GAIN", description="Gain in e-/ADU.")
    saturation: str = Field("SATURATE", description="Saturation level in ADU.")
    zeropoint: str = Field("MAGZP", description="Magnitude of 1 ADU total flux.")
    read_noise: str = Field("RDNOISE", description="Read noise in e-.")
    pixel_scale: str = Field("PIXSCALE", description="Pixel scale in arcsec/px.")
    seeing: str = Field("SEEING", description="Seeing FWHM in arcsec.")
    filter: str = Field("FILTER", description="Filter name.")
    extra: tuple[str, ...] = Field(("FIELD", "VISIT", "EXPTIME"), description="Further keys copied into ImageMeta.extra when present.")


def write_image_fits(path, data: np.ndarray, header: fits.Header | None = None) -> Path:
    """Write a 2-D image as the primary HDU atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"data: expected a 2-D image for {path}, got shape {data.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fits.PrimaryHDU(data=data, header=header).writeto(tmp, overwrite=True, output_verify="exception")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_image_fits(path, hdu: int | str = 0) -> tuple[np.ndarray, fits.Header]:
    """Read one image HDU: (data (ny, nx) float32, header). ``ValueError`` naming the file on problems."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such FITS file")
    problem = None
    # No warnings filters here: they are process-global, and a "warnings as errors" filter set
    # while one thread reads a file turns another thread's astropy fit warning into an exception
    # (a PSF star silently dropped: builds on a thread pool were not reproducible). Truncation
    # and a wrong BITPIX are checked explicitly instead (astropy only warns about them).
    try:
        with fits.open(path, memmap=False) as hdul:
            try:
                h = hdul[hdu]
            except (IndexError, KeyError):
                problem = f"has no HDU {hdu!r} ({len(hdul)} HDUs)"
            else:
                if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                    problem = f"HDU {hdu!r} is not an image ({type(h).__name__})"
                else:
                    if not isinstance(h, fits.CompImageHDU):
                        end = h.fileinfo()["datLoc"] + h.size
                        if end > path.stat().st_size:
                            raise ValueError(f"HDU {hdu!r} needs {end} bytes, the file holds {path.stat().st_size}")
                    data = h.data
                    header = h.header.copy()
    except (OSError, TypeError, ValueError, AstropyUserWarning, fits.verify.VerifyWarning) as exc:
        why = _diagnose_primary(path)
        raise ValueError(f"{path}: {why or 'unreadable or truncated FITS file'} ({exc})") from exc
    if problem:
        raise ValueError(f"{path}: {problem}")
    why = _diagnose_primary(path)  # e.g. a BITPIX that leaves bytes no header describes
    if why:
        raise ValueError(f"{path}: {why}")
    if data is None or np.ndim(data) != 2:
        raise ValueError(f"{path}: HDU {hdu!r} holds no 2-D image (shape {None if data is None else np.shape(data)})")
    if np.size(data) == 0:
        raise ValueError(f"{path}: HDU {hdu!r} is a zero-size image (shape {np.shape(data)})")
    return np.asarray(data, dtype=np.float32), header


_VALID_BITPIX = (8, 16, 32, 64, -32, -64)


def _diagnose_primary(path: Path) -> str | None:
    """A precise reason why a FITS file does not read, from its primary header alone (or None)."""
    try:
        with open(path, "rb") as f:
            hdr = fits.Header.fromfile(f)
            start = f.tell()
        bitpix = hdr.get("BITPIX")
        if bitpix not in _VALID_BITPIX:
            return f"invalid BITPIX = {bitpix!r} (FITS allows {list(_VALID_BITPIX)})"
        naxis = int(hdr.get("NAXIS", 0))
        dims = [int(hdr.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
        need = abs(int(bitpix)) // 8 * int(np.prod(dims)) if naxis else 0
        have = path.stat().st_size - start
        shape = f"BITPIX = {bitpix}, NAXISn = {dims}"
        if have < need:
            return f"truncated: the header ({shape}) needs {need} data bytes, the file holds {have}"
        padded = -(-need // 2880) * 2880
        if have > padded:
            with open(path, "rb") as f:
                f.seek(start + padded)
                nxt = f.read(2880)
            if not nxt.startswith(b"XTENSION") and nxt.strip(b"\x00 "):  # trailing zero padding is harmless
                return (f"wrong BITPIX or NAXISn: the header ({shape}) describes {need} data bytes but "
                        f"{have} follow it and no extension starts after them")
    except Exception:  # the header itself is unreadable: no more precise reason
        return None
    return None


def image_meta_from_header(header: fits.Header, keys: HeaderKeys = HeaderKeys()) -> ImageMeta:
    """Build :class:`tasks.types.ImageMeta`; exposure, sensor and mjd keys are required."""
    missing = [k for k in (keys.exposure, keys.sensor, keys.mjd) if k not in header]
    if missing:
        raise ValueError(f"header: missing required keys {missing}")

    def num(key: str, default):
        if key not in header or header[key] in (None, ""):
            return default
        try:
            return float(header[key])
        except (TypeError, ValueError):
            raise ValueError(f"header: key {key} is not a number ({header[key]!r})") from None

    night = str(header.get(keys.night, "") or "")
    return ImageMeta(
        exposure=str(header[keys.exposure]).strip(),
        sensor=str(header[keys.sensor]).strip(),
        night=night.strip(),
        mjd=num(keys.mjd, None),
        gain=num(keys.gain, 1.0),
        saturation=num(keys.saturation, float("inf")),
        zeropoint=num(keys.zeropoint, 25.0),
        read_noise=num(keys.read_noise, 0.0),
        pixel_scale=num(keys.pixel_scale, 1.0),
        seeing=num(keys.seeing, None),
        filter=str(header.get(keys.filter, "") or "").strip(),
        extra={k: header[k] for k in keys.extra if k in header},
    )


def wcs_from_header(header: fits.Header) -> WCS:
    """Celestial WCS of a header; ``ValueError`` when there is none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header)
        except Exception as exc:  # astropy raises several types for broken WCS keywords
            raise ValueError(f"header: invalid WCS ({' '.join(str(exc).split())})") from exc
    if not w.has_celestial:
        raise ValueError("header: no celestial WCS (CTYPE1/2 RA---/DEC-- keys missing)")
    scale = w.celestial.pixel_scale_matrix
    det = float(np.linalg.det(scale)) if np.all(np.isfinite(scale)) else float("nan")
    if not (np.isfinite(det) and det != 0.0):
        raise ValueError(f"header: invalid WCS (singular or non-finite pixel scale matrix {scale.tolist()})")
    return w.celestial


def pixel_scale_arcsec(path, hdu: int | str = 0) -> float | None:
    """Mean pixel scale (arcsec/px) from an image's WCS, else its PIXSCALE key; None if neither."""
    from astropy.wcs.utils import proj_plane_pixel_scales
    try:
        header = fits.getheader(path, hdu)
    except Exception:
        return None
    try:
        return float(np.mean(proj_plane_pixel_scales(wcs_from_header(header))) * 3600.0)
    except ValueError:
        v = header.get("PIXSCALE")
        return float(v) if isinstance(v, (int, float)) and v > 0 else None
