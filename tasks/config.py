"""The per-sensor settings (pydantic models, frozen, ``extra="forbid"``), apart from the steps.

Each step's module re-exports its own model (``tasks.psf.PSFConfig`` is this module's), so
callers keep their imports. They live here, with nothing heavier than pydantic imported, so
that the flow's process validates a settings file without importing the image libraries the
steps need (photutils, scipy, sep, astropy): 0.012 s of CPU against 1.9-2.1 s for importing
``tasks.sensor``, before the first task run of a build (measured; ``docs/per_sensor.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PSFConfig(BaseModel):
    """Star selection and ePSF building parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    oversampling: int = Field(3, ge=1, le=8, description="ePSF oversampling factor")
    box_size: int = Field(25, ge=7, description="star cut-out size in px (odd)")
    max_stars: int = Field(100, ge=1, description="use at most this many (brightest) stars")
    min_stars: int = Field(15, ge=1, description="fewer selected stars -> Moffat fallback")
    maxiters: int = Field(5, ge=1, description="EPSFBuilder iterations")
    detect_thresh: float = Field(3.0, gt=0, description="sep threshold in background sigma")
    min_snr: float = Field(20.0, gt=0, description="aperture S/N cut for PSF stars")
    smoothing_kernel: Literal["quartic", "quadratic"] = Field(
        "quadratic", description="EPSFBuilder smoothing kernel (quadratic: measured 4x smaller "
        "sub-pixel centroid error than quartic with ~70 stars at oversampling 3)")
    stars_per_phase: float = Field(
        6.0, gt=0, description="lower the oversampling until n_stars / os**2 >= this")
    aper_radius: float = Field(6.0, gt=0, description="aperture radius (px) for the S/N cut")
    isolation_px: float = Field(12.0, ge=0, description="no other detection within this (px)")
    saturation_fraction: float = Field(
        0.9, gt=0, le=1, description="reject stars whose peak exceeds this x saturation")
    max_elongation: float = Field(1.5, ge=1, description="reject a/b above this")
    size_clip: float = Field(1.5, gt=1, description="reject sqrt(ab) above this x median")
    fallback_beta: float = Field(
        3.5, gt=1, description="Moffat beta used when no star is usable and seeing is known")

    @model_validator(mode="after")
    def _odd_box(self) -> "PSFConfig":
        if self.box_size % 2 == 0:
            raise ValueError(f"box_size must be odd, got {self.box_size}")
        if self.min_stars > self.max_stars:
            raise ValueError(
                f"min_stars ({self.min_stars}) must be <= max_stars ({self.max_stars})")
        return self


class InjectConfig(BaseModel):
    """How many fake point sources go where, and how bright."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_host: int = Field(40, ge=0, description="injections around catalogue hosts per sensor")
    n_hostless: int = Field(40, ge=0, description="injections uniform over the sensor")
    mag_bright: float = Field(15.0, description="brightest magnitude (without limiting_mag)")
    mag_faint: float = Field(21.0, description="faintest magnitude (without limiting_mag)")
    bright_range: float = Field(
        5.0, gt=0, description="with limiting_mag: brightest = limiting_mag - bright_range")
    beyond_limit: float = Field(
        1.0, ge=0, description="with limiting_mag: faintest = limiting_mag + beyond_limit")
    edge_px: int = Field(16, ge=0, description="keep injections this far from the border (px)")
    mask_margin_px: int = Field(3, ge=0, description="and this far from masked pixels (px)")
    min_separation_px: float = Field(
        8.0, ge=0, description="an injection closer than this to an earlier one is dropped "
        "(two blended fakes would give one detection two labels)")
    min_r_half_px: float = Field(
        0.5, gt=0, description="floor on a host's r_half (px) for the offset scale")

    @model_validator(mode="after")
    def _mags(self) -> "InjectConfig":
        if self.mag_faint <= self.mag_bright:
            raise ValueError(
                f"mag_faint ({self.mag_faint}) must be fainter than mag_bright ({self.mag_bright})")
        return self


class SubtractConfig(BaseModel):
    """Parameters of the registration and the Alard-Lupton kernel fit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kernel_half_width: int = Field(7, ge=2, le=20, description="Kernel is (2*h+1)^2 px.")
    basis_sigmas: tuple[float, ...] = Field((0.7, 1.5, 3.0), description="Gaussian basis widths in px.")
    basis_degrees: tuple[int, ...] = Field((6, 4, 2), description="Polynomial degree multiplying each Gaussian.")
    stamp_half_width: int = Field(10, ge=3, description="Fit stamps are (2*s+1)^2 px around each star.")
    max_stars: int = Field(150, ge=1, description="At most this many (brightest usable) stars in the fit.")
    min_stars: int = Field(6, ge=1, description="Fewer usable stars than this -> Gaussian fallback kernel.")
    detect_thresh: float = Field(5.0, gt=0, description="sep detection threshold in background sigma.")
    match_radius: float = Field(2.5, gt=0, description="Max distance (px) to match stars between the images.")
    max_peak_fraction: float = Field(0.5, gt=0, le=1, description="Fit stars must peak below this fraction of saturation.")
    min_peak_snr: float = Field(15.0, gt=0, description="Fit stars must peak above this many background sigma.")
    clip_sigma: float = Field(3.0, gt=0, description="Stamps with chi2 beyond median + clip_sigma * robust sigma are rejected.")
    clip_iterations: int = Field(3, ge=0, description="Rounds of stamp rejection.")
    background_box: int = Field(64, ge=8, description="sep.Background box size (px).")
    interp_order: int = Field(3, ge=1, le=5, description="Spline order used to resample the ref.")
    zero_is_bad: bool = Field(True, description="Treat exactly-zero pixels as missing (zero-filled).")

    @model_validator(mode="after")
    def _check(self) -> "SubtractConfig":
        if len(self.basis_sigmas) != len(self.basis_degrees) or not self.basis_sigmas:
            raise ValueError("basis_sigmas and basis_degrees must be non-empty and of equal length")
        if min(self.basis_sigmas) <= 0:
            raise ValueError(f"basis_sigmas: must be > 0, got {self.basis_sigmas}")
        if min(self.basis_degrees) < 0:
            raise ValueError(f"basis_degrees: must be >= 0, got {self.basis_degrees}")
        return self


class DetectConfig(BaseModel):
    """sep detection on the difference image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresh: float = Field(5.0, gt=0, description="threshold in units of the noise map (sigma)")
    minarea: int = Field(5, ge=1, description="minimum number of pixels above threshold")
    deblend_cont: float = Field(0.005, gt=0, le=1, description="sep deblending contrast")
    clean: bool = Field(
        False, description="sep/SExtractor cleaning of wing detections; off: with the PSF "
        "filter it dropped 1/3 of isolated injections (157 vs 233 detections, measured)")
    negative: bool = Field(True, description="also detect negative sources (on -diff)")
    aper_radius_fwhm: float = Field(1.5, gt=0, description="aperture radius in PSF FWHMs")
    default_fwhm_px: float = Field(3.0, gt=0, description="FWHM used when no PSF is given")
    match_radius_px: float = Field(2.0, gt=0, description="injection / truth match radius (px)")
    max_detections: int = Field(
        20000, ge=1, description="keep at most this many (highest S/N) per image")


class SensorConfig(BaseModel):
    """Everything the per-sensor pipeline needs (nests the step configs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psf: PSFConfig = Field(default_factory=PSFConfig, description="ePSF building / star selection")
    inject: InjectConfig = Field(default_factory=InjectConfig, description="injection plan")
    subtract: SubtractConfig = Field(default_factory=SubtractConfig, description="subtraction")
    detect: DetectConfig = Field(default_factory=DetectConfig, description="detection on diff")
    tns_radius_arcsec: float = Field(2.0, gt=0, description="TNS match radius (arcsec)")
    bright_star_radius_px: float = Field(
        15.0, gt=0, description="NEAR_BRIGHT_STAR: a bright catalogue star within this (px)")
    bright_peak_fraction: float = Field(
        0.25, gt=0, description="a star is bright if its expected peak >= this x saturation")
    bright_star_mag: float | None = Field(
        None, description="or if brighter than this magnitude (None: peak rule only)")
    catalog_thresh: float = Field(
        5.0, gt=0, description="catalog_from_ref: sep threshold in background sigma")
    extended_factor: float = Field(
        1.5, gt=1, description="catalog_from_ref: extended if r_half > this x PSF r_half")
    use_given_sub: bool = Field(
        False, description="where a manifest row gives a difference image (`sub`), inject into "
        "and detect on it instead of subtracting (rows with `sub` and no `ref` always do); "
        "see docs/per_sensor.md 'Real-data ingest modes'")
