"""Shared names, flag bits and small records used across the chain.

Nothing here knows about Prefect or files. Shapes: N stamps -> (N, 3, 29, 29) float32,
channels (new, ref, sub). Pixel coordinates are 0-based (numpy convention: x = column,
y = row); FITS 1-based coordinates only appear inside WCS calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag

STAMP_SIZE = 29
CHANNELS = ("new", "ref", "sub")


class StampFlag(IntFlag):
    """Per-stamp problem bits; the meaning is written into ``dataset.json``."""

    EDGE = 1  # stamp crosses the image edge; the outside is padded with 0
    NEAR_MASK = 2  # stamp contains masked / NaN / zero-filled pixels (set to 0)
    SATURATED = 4  # stamp contains pixels at or above saturation in new or ref
    PSF_FALLBACK = 8  # the sensor's PSF is the analytic fallback, not an ePSF
    NEAR_BRIGHT_STAR = 16  # a catalogue star brighter than the bright limit is within 15 px
    NEGATIVE = 32  # negative detection (isdiffpos false)
    AMBIGUOUS_MATCH = 64  # more than one injection / truth object inside the match radius
    INJECTION_ON_ARTIFACT = 128  # an injection lies on top of an artifact (true_label -1)
    NO_REF = 256  # no reference image was given (difference-only ingest): the ref channel is 0


FLAG_MEANINGS: dict[str, str] = {
    f.name: f"bit {int(f).bit_length() - 1} (value {int(f)})" for f in StampFlag
}

# Columns of stamps.parquet (contract: ../shared/contracts.md); extra columns are allowed.
STAMP_COLUMNS = (
    "stamp_id", "night", "exposure", "sensor", "det_id", "x", "y", "ra", "dec", "mjd",
    "isdiffpos", "snr", "mag", "label", "true_class", "true_label", "injection_id",
    "host_offset", "flags",
)

# true_class names
REAL_CLASSES = ("injected", "supernova", "hostless", "variable", "asteroid", "nuclear")
# bogus true_class names of simulated artifacts (tasks.simulate.ARTIFACT_KINDS) and of residuals
ARTIFACT_CLASSES = (
    "cosmic_ray", "hot_pixel", "bad_column", "dead_pixel", "saturated_star", "bleed_trail",
    "diffraction_spike", "halo", "dipole", "satellite_trail", "pattern_noise", "tracking_error",
    "masked_ref", "ref_edge", "crowded_field",
)
RESIDUAL_CLASSES = ("star_residual", "galaxy_residual", "noise")


@dataclass(frozen=True)
class ImageMeta:
    """What the per-sensor steps need from a FITS header (keys are named in config)."""

    exposure: str
    sensor: str
    night: str
    mjd: float
    gain: float = 1.0  # e-/ADU
    saturation: float = float("inf")  # ADU, on the image as stored
    zeropoint: float = 25.0  # mag of 1 ADU (total flux)
    read_noise: float = 0.0  # e-
    pixel_scale: float = 1.0  # arcsec / px
    seeing: float | None = None  # arcsec FWHM if the header says
    filter: str = ""
    extra: dict = field(default_factory=dict)
