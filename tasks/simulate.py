"""Seeded simulation of a transient survey: static sky, deep reference, nightly visits.

Pure functions: arrays, headers and tables in, frozen results out; no file I/O (see
``storage/survey.py`` for writing). Model (details in ``docs/simulation.md``):

- A night visits each of ``n_fields`` fields ``n_visits`` times; each visit of a field is
  one exposure of ``n_sensors`` sensors of ``ny x nx`` px.
- The static sky of (field, sensor) -- stars drawn from a power-law number count,
  Sersic galaxies, the reference image and its misregistration -- depends only on
  ``(seed, field, sensor)``; events, artifacts, noise, seeing and pointing derive from
  ``(seed, night, field, sensor)`` (pointing from ``(seed, night, field, visit)``).
- Point sources are a Moffat PSF (pixel-integrated, drawn with galsim through an
  oversampled ``InterpolatedImage``); galaxies are galsim Sersic profiles convolved with
  the same Moffat. Noise: Poisson on sky + sources (through the gain) and Gaussian read
  noise; values are clipped at ``saturation``. Images are float32 ADU.
- The reference is the mean of ``ref_n_stack`` exposures (same ADU scale and zero point,
  gain ``gain * ref_n_stack``, read noise ``read_noise * sqrt(ref_n_stack)``) at
  ``ref_seeing``. Its header WCS is the nominal sensor WCS, while its pixels are drawn at
  an offset of ``misregistration_px`` (the residual a star-based refinement must fix).
- New images carry a per-visit pointing jitter that their WCS describes exactly.
- Realism artifacts (``ARTIFACT_KINDS``: saturated cores, bleeds, spikes, ghosts, displaced
  stars, satellite trails, cosmic-ray tracks, dead pixels, pattern noise, tracking errors,
  masked / shallow ref regions, crowded patches), a field-varying PSF and trailed asteroids,
  each switched by a rate that is 0 in the base config; they draw from their own random
  streams, so with the rates at 0 the images are those of the code before them.

Pixel coordinates in every table are 0-based (x = column, y = row) in the image named
by the row (the exposure's new image; the catalogue uses the ref's header WCS).
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from dataclasses import dataclass

import galsim
import numpy as np
import pandas as pd
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SurveyConfig",
    "PRESETS",
    "get_preset",
    "VisitImage",
    "FieldSensorSimulation",
    "simulate_field_sensor",
    "make_tns_list",
    "exposure_id",
    "sensor_id",
    "parse_night",
    "sensor_wcs",
]

EVENT_KINDS = ("supernova", "hostless", "nuclear", "variable", "asteroid")
TNS_KINDS = ("supernova", "hostless", "nuclear")
ARTIFACT_KINDS = ("cosmic_ray", "hot_pixel", "bad_column", "dead_pixel", "saturated_star", "bleed_trail", "diffraction_spike",
                  "halo", "dipole", "satellite_trail", "pattern_noise", "tracking_error", "masked_ref", "ref_edge",
                  "crowded_field")
# truth ``scope`` of an artifact row (read by tasks.detect.assign_truth): 'point' (a compact or line
# artifact: beats star residuals), 'area' (a region where everything is suspect: beats star and galaxy
# residuals), 'background' (an image-wide pattern: only relabels what would be 'noise')
REF_MJD = 57000.0  # epoch written into reference headers (the ref predates every night)

_Range = tuple[float, float]


class SurveyConfig(BaseModel):
    """Every property of a simulated survey (a preset only names values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("custom", description="Name of the survey / preset, written to headers (TELESCOP).")
    # structure
    n_fields: int = Field(2, ge=1, le=999, description="Number of fields visited each night.")
    n_sensors: int = Field(4, ge=1, le=100, description="Sensors per exposure; ids are '00'..'NN'.")
    nx: int = Field(512, ge=64, description="Sensor width in pixels (columns).")
    ny: int = Field(512, ge=64, description="Sensor height in pixels (rows).")
    pixel_scale: float = Field(1.0, gt=0, description="Pixel scale in arcsec/px.")
    n_visits: int = Field(2, ge=2, le=99, description="Visits of every field per night (>= 2).")
    visit_interval_min: float = Field(60.0, gt=0, description="Minutes between successive visits of a field.")
    field_time_s: float = Field(30.0, gt=0, description="Seconds between exposures of successive fields within a visit.")
    exptime: float = Field(6.0, gt=0, description="Exposure time of one new image in seconds (EXPTIME).")
    filter: str = Field("r", description="Filter name written to FILTER.")
    # detector and sky
    sky_level: float = Field(300.0, ge=0, description="Sky background in ADU/px per exposure.")
    gain: float = Field(2.0, gt=0, description="Gain in e-/ADU of a new image.")
    read_noise: float = Field(5.0, ge=0, description="Read noise in e- of a new image.")
    saturation: float = Field(60000.0, gt=0, description="Saturation level in ADU; pixels are clipped there.")
    zeropoint: float = Field(28.0, description="Magnitude of a source giving 1 ADU in total (MAGZP).")
    # PSF
    seeing_range: _Range = Field((1.6, 2.6), description="Range (arcsec FWHM) of the uniform seeing of new images.")
    ref_seeing: float = Field(1.3, gt=0, description="Seeing of the reference (arcsec FWHM).")
    ref_n_stack: int = Field(4, ge=1, description="Reference depth: it is the mean of this many exposures (lower noise).")
    moffat_beta: float = Field(3.0, gt=1.5, description="Moffat beta of the PSF (all images).")
    misregistration_px: float = Field(0.2, ge=0, le=2.0, description="Sigma (px, per axis) of the ref's true offset from its WCS-claimed position.")
    pointing_jitter_px: float = Field(1.5, ge=0, description="Sigma (px, per axis) of each visit's pointing offset (described by its WCS).")
    # static sky
    sky_center: _Range = Field((150.0, 2.0), description="RA, Dec (deg) of the centre of field 0.")
    star_density: float = Field(5000.0, ge=0, description="Stars per deg^2 brighter than star_mag_ref.")
    star_mag_ref: float = Field(20.0, description="Reference magnitude for star_density.")
    star_slope: float = Field(0.3, gt=0, description="Slope of log10 N(<m) per magnitude for stars.")
    star_mag_range: _Range = Field((14.0, 22.5), description="Magnitude range of simulated stars.")
    galaxy_density: float = Field(3000.0, ge=0, description="Galaxies per deg^2 within galaxy_mag_range.")
    galaxy_slope: float = Field(0.4, gt=0, description="Slope of log10 N(<m) per magnitude for galaxies.")
    galaxy_mag_range: _Range = Field((15.0, 22.0), description="Magnitude range of simulated galaxies.")
    sersic_n: tuple[float, ...] = Field((0.5, 1.0, 1.5, 2.5, 4.0), description="Sersic indices drawn uniformly (discrete: galsim caches them).")
    r_half_arcsec: _Range = Field((2.0, 0.4), description="Galaxy half-light radius: lognormal median (arcsec) and sigma of ln.")
    ellipticity_max: float = Field(0.6, ge=0, lt=1, description="Reduced shear |g|=(a-b)/(a+b) of galaxies is uniform in [0, this].")
    # events (Poisson means per sensor per night)
    supernova_rate: float = Field(2.0, ge=0, description="Supernovae per sensor per night, in catalogue galaxies.")
    hostless_rate: float = Field(1.0, ge=0, description="Hostless transients per sensor per night (uniform on the sensor).")
    nuclear_rate: float = Field(0.0, ge=0, description="Nuclear transients (at a galaxy centre) per sensor per night.")
    variable_rate: float = Field(1.0, ge=0, description="Variable stars (brightness change new vs ref) per sensor per night.")
    asteroid_rate: float = Field(0.5, ge=0, description="Asteroids (moving between visits) per sensor per night.")
    event_mag_range: _Range = Field((17.0, 21.5), description="Uniform magnitude range of transients and asteroids.")
    variable_amp: float = Field(0.7, ge=0, description="Variables change by a magnitude uniform in [-amp, amp] (|dm| >= 0.2 amp).")
    sn_offset_scale: float = Field(1.0, gt=0, description="SN host offsets follow the host's exponential profile times this factor.")
    event_age_days: float = Field(30.0, gt=0, description="Transients started up to this many days before the night.")
    asteroid_speed: _Range = Field((0.1, 1.0), description="Asteroid speed range in arcsec/min.")
    # artifacts
    cosmic_ray_rate: float = Field(3.0, ge=0, description="Cosmic rays per exposure per sensor.")
    cosmic_ray_adu: _Range = Field((300.0, 5000.0), description="Peak ADU range of cosmic rays (above sky).")
    hot_pixel_rate: float = Field(2.0, ge=0, description="Hot pixels per sensor per night (same pixel in every visit of the night).")
    hot_pixel_adu: _Range = Field((500.0, 20000.0), description="ADU range of hot pixels (above sky).")
    bad_column_rate: float = Field(0.2, ge=0, description="Bad column segments per sensor per night.")
    bad_column_adu: _Range = Field((100.0, 1000.0), description="ADU offset range of bad columns.")
    # artifacts of the realism issue (all off by default: 0 keeps the old images byte for byte)
    cosmic_ray_track_rate: float = Field(0.0, ge=0, description="Long cosmic-ray tracks (muons, 5-40 px, grazing incidence) per exposure per sensor.")
    dead_pixel_rate: float = Field(0.0, ge=0, description="Dead / cold pixel clusters (1-3 x 1-2 px at 0-30 % of the sky, same every visit of the night) per sensor per night.")
    saturated_star_truth: bool = Field(False, description="Record stars whose model peak reaches saturation as 'saturated_star' artifacts (their detections get that class instead of star_residual).")
    bright_star_peak: float = Field(0.3, gt=0, description="A star is 'bright' (spikes, halo) when its model peak >= this x saturation.")
    spike_rate: float = Field(0.0, ge=0, le=1, description="Fraction of bright stars showing diffraction spikes (new and ref).")
    spike_strength: float = Field(0.02, ge=0, description="Spike surface brightness at 1 FWHM from the star, as a fraction of its peak (falls as 1/d^2).")
    spike_angle_deg: float = Field(0.0, description="Position angle (deg, from +x) of the spike cross in new images.")
    ref_spike_rotation_deg: float = Field(0.0, description="Rotation of the ref's spike cross relative to the new images' (another telescope / rotator).")
    ref_spike_scale: float = Field(1.0, ge=0, description="Ref spike strength relative to the new images'.")
    bleed_rate: float = Field(0.0, ge=0, le=1, description="Fraction of saturated stars that bleed along their columns (CCDs; 0 for CMOS).")
    halo_rate: float = Field(0.0, ge=0, le=1, description="Fraction of bright stars with a reflection ghost (annulus) in new images.")
    halo_flux_fraction: _Range = Field((0.01, 0.03), description="Flux of a ghost as a fraction of its star's flux.")
    halo_radius_px: _Range = Field((8.0, 20.0), description="Ghost annulus radius range (px).")
    dipole_rate: float = Field(0.0, ge=0, le=1, description="Fraction of stars displaced between ref and new (proper motion, DCR, local misregistration): dipoles.")
    star_flux_scatter: float = Field(0.0, ge=0, le=0.5, description="Sigma of every star's fractional flux difference new vs ref (colour terms between the bands, flat-field errors): asymmetric star residuals.")
    dipole_shift_px: _Range = Field((0.2, 1.0), description="Displacement range (px) of those stars.")
    psf_variation: float = Field(0.0, ge=0, le=1, description="Field-varying PSF of new images: FWHM grows by this fraction from the sensor centre to its corners (r^2).")
    tracking_error_rate: float = Field(0.0, ge=0, le=1, description="Fraction of exposures with a tracking error (elongated PSF, all sensors).")
    tracking_error_shear: _Range = Field((0.1, 0.3), description="Reduced shear |g| range of tracking-error PSFs.")
    satellite_rate: float = Field(0.0, ge=0, description="Satellite / aircraft trails per exposure per sensor.")
    satellite_adu: _Range = Field((30.0, 1000.0), description="Peak ADU range (above sky) of satellite trails.")
    pattern_noise_rate: float = Field(0.0, ge=0, le=1, description="Fraction of sensor-nights whose new images carry read-out pattern noise.")
    pattern_noise_adu: _Range = Field((0.5, 1.5), description="Pattern-noise amplitude range in units of the new image's sky noise.")
    ref_mask_rate: float = Field(0.0, ge=0, description="Masked (blanked, sky-filled) regions per reference image.")
    ref_mask_size_px: _Range = Field((20.0, 120.0), description="Side range (px) of masked ref regions.")
    ref_edge_rate: float = Field(0.0, ge=0, le=1, description="Fraction of refs with a shallow edge band (fewer stacked frames: noisier, offset background).")
    ref_edge_px: _Range = Field((10.0, 40.0), description="Width range (px) of shallow ref edge bands.")
    crowded_rate: float = Field(0.0, ge=0, le=1, description="Fraction of field-sensors holding a crowded patch (a cluster / dense star field).")
    crowded_stars: int = Field(800, ge=0, description="Extra stars in a crowded patch.")
    crowded_radius_px: _Range = Field((60.0, 150.0), description="Radius range (px) of crowded patches.")
    fast_asteroid_rate: float = Field(0.0, ge=0, description="Fast (trailed) asteroids per sensor per night; any asteroid is drawn as a trail when it moves > 1 px in an exposure.")
    fast_asteroid_speed: _Range = Field((5.0, 60.0), description="Speed range (arcsec/min) of fast asteroids.")
    sn_host_dmag: tuple[float, float] | None = Field(None, description="None: SN magnitudes uniform in event_mag_range; else (mean, sigma) of SN mag - host mag (clipped to event_mag_range).")
    # reporting
    tns_fraction: float = Field(0.6, ge=0, le=1, description="Fraction of bright transients reported to the TNS.")
    tns_mag50: float = Field(19.5, description="Magnitude at which the reported fraction is half of tns_fraction.")
    tns_mag_width: float = Field(0.5, gt=0, description="Width (mag) of the logistic fall of the reported fraction.")

    @model_validator(mode="after")
    def _check(self) -> "SurveyConfig":
        for name in ("seeing_range", "star_mag_range", "galaxy_mag_range", "event_mag_range",
                     "asteroid_speed", "cosmic_ray_adu", "hot_pixel_adu", "bad_column_adu",
                     "halo_flux_fraction", "halo_radius_px", "dipole_shift_px", "tracking_error_shear",
                     "satellite_adu", "pattern_noise_adu", "ref_mask_size_px", "ref_edge_px",
                     "crowded_radius_px", "fast_asteroid_speed"):
            lo, hi = getattr(self, name)
            if not (lo <= hi):
                raise ValueError(f"{name}: lower bound {lo} exceeds upper bound {hi}")
        if self.seeing_range[0] <= 0:
            raise ValueError(f"seeing_range: seeing must be > 0 arcsec, got {self.seeing_range}")
        if self.r_half_arcsec[0] <= 0 or self.r_half_arcsec[1] < 0:
            raise ValueError(f"r_half_arcsec: need median > 0 and sigma >= 0, got {self.r_half_arcsec}")
        if not self.sersic_n or min(self.sersic_n) < 0.3 or max(self.sersic_n) > 6.2:
            raise ValueError(f"sersic_n: values must lie in [0.3, 6.2], got {self.sersic_n}")
        if self.n_fields * self.field_time_s > self.visit_interval_min * 60:
            raise ValueError("visit_interval_min: a visit of all fields (n_fields * field_time_s) must "
                             "fit inside visit_interval_min so exposure ids sort in time order")
        if not -90 < self.sky_center[1] < 90:
            raise ValueError(f"sky_center: Dec must lie in (-90, 90), got {self.sky_center[1]}")
        return self

    @property
    def sensor_area_deg2(self) -> float:
        return self.nx * self.ny * (self.pixel_scale / 3600.0) ** 2


# small and fast for tests / CI and the demo: 2 fields x 6 sensors x 2 visits of 512x512 px,
# with artifact rates raised (not realistic) so that bogus are plentiful in a small demo
_CI = SurveyConfig(name="ci", n_sensors=6, cosmic_ray_rate=15.0, hot_pixel_rate=10.0,
                   bad_column_rate=2.0, supernova_rate=3.0, hostless_rate=1.5, variable_rate=2.0,
                   asteroid_rate=1.0)

PRESETS: dict[str, SurveyConfig] = {
    "ci": _CI,
    # `ci` with a quiet sky: the real-event rates cut 6x (7.5 -> 1.25 events per sensor-night), the
    # rest as `ci` (derived from it, so it follows any change there). Its training nights' own label
    # errors (real events detected on the difference and labelled bogus) come near the paper's
    # 0.6-1 % instead of `ci`'s ~5.5 %: for the flagging study (docs/experiments/reading.md,
    # "Flagging on a quiet sky"), not for TNS-based validation.
    "ci-quiet": SurveyConfig(**(_CI.model_dump() | dict(name="ci-quiet", supernova_rate=0.5, hostless_rate=0.25,
                                                        variable_rate=0.35, asteroid_rate=0.15))),
    # Tomo-e Gozen: 84 CMOS sensors 2000x1128 px at 1.19"/px, no filter, limit ~18 mag
    # (6 s stacks), Kiso seeing ~3-5". Zero point chosen so an 18 mag star has S/N ~ 5 at 4".
    "tomoe": SurveyConfig(
        name="tomoe", n_fields=2, n_sensors=84, nx=2000, ny=1128, pixel_scale=1.19, exptime=6.0,
        filter="clear", sky_level=400.0, gain=1.2, read_noise=2.0, saturation=30000.0,
        zeropoint=24.7, seeing_range=(3.0, 5.0), ref_seeing=2.4, ref_n_stack=8,
        star_density=600.0, star_mag_ref=18.0, star_mag_range=(9.0, 19.5),
        galaxy_density=150.0, galaxy_mag_range=(13.0, 18.5), r_half_arcsec=(4.0, 0.4),
        event_mag_range=(13.5, 18.0), tns_mag50=17.0, asteroid_speed=(0.2, 2.0),
        # realism (sources per number in docs/simulation.md, "Presets: artifact and event rates")
        cosmic_ray_rate=1.0, cosmic_ray_track_rate=0.1, dead_pixel_rate=2.0, saturated_star_truth=True, spike_rate=1.0, spike_strength=0.02,
        spike_angle_deg=0.0, ref_spike_rotation_deg=45.0, ref_spike_scale=0.5, bleed_rate=0.0,
        halo_rate=0.3, dipole_rate=0.5, dipole_shift_px=(0.05, 0.3), psf_variation=0.1, star_flux_scatter=0.08,
        tracking_error_rate=0.01, satellite_rate=0.003, pattern_noise_rate=0.02, ref_mask_rate=0.5,
        ref_edge_rate=0.1, crowded_rate=0.05, fast_asteroid_rate=0.02, nuclear_rate=0.05,
        sn_host_dmag=(1.0, 1.0),
    ),
    # ZTF: 1.01"/px, seeing ~2", r ~20.5 limit; sensor reduced to 1024x1024 (a quadrant of
    # a 3072x3080 CCD is 3072x3080/2; 1024^2 keeps tests fast) -- see docs/simulation.md.
    "ztf": SurveyConfig(
        name="ztf", n_fields=2, n_sensors=16, nx=1024, ny=1024, pixel_scale=1.01, exptime=30.0,
        filter="r", sky_level=600.0, gain=6.2, read_noise=8.0, saturation=60000.0,
        zeropoint=26.0, seeing_range=(1.7, 2.7), ref_seeing=1.6, ref_n_stack=15,
        star_density=2500.0, star_mag_ref=20.5, star_mag_range=(11.0, 21.5),
        galaxy_density=3000.0, galaxy_mag_range=(15.0, 21.0),
        event_mag_range=(16.0, 20.5), tns_mag50=19.5,
        # realism (sources per number in docs/simulation.md, "Presets: artifact and event rates")
        cosmic_ray_rate=1.5, cosmic_ray_track_rate=1.0, cosmic_ray_adu=(100.0, 1500.0),
        hot_pixel_adu=(100.0, 3000.0), dead_pixel_rate=2.0, saturated_star_truth=True, spike_rate=1.0, spike_strength=0.02,
        spike_angle_deg=0.0, ref_spike_rotation_deg=0.0, ref_spike_scale=1.0, bleed_rate=1.0,
        halo_rate=0.3, dipole_rate=0.5, dipole_shift_px=(0.03, 0.15), psf_variation=0.05, star_flux_scatter=0.02,
        tracking_error_rate=0.005, satellite_rate=0.01, pattern_noise_rate=0.01, ref_mask_rate=0.1,
        ref_edge_rate=0.1, crowded_rate=0.05, fast_asteroid_rate=0.02, nuclear_rate=0.2,
        sn_host_dmag=(1.0, 1.0),
    ),
    # validation nights sized for honest intervals: >= 300 TNS-matched real detections and
    # >= 1e5 bogus per night (64 fields x 4 sensors x 2 visits = 512 images of 1024x1024 px,
    # ~300 detections each, measured). Event and artifact rates are raised per sensor (not
    # realistic per area) so that one night reaches these counts; build time in docs/validation.md.
    "val": SurveyConfig(name="val", n_fields=64, n_sensors=4, nx=1024, ny=1024, supernova_rate=10.0,
                        hostless_rate=4.0, variable_rate=4.0, asteroid_rate=2.0, cosmic_ray_rate=400.0,
                        hot_pixel_rate=100.0, bad_column_rate=8.0),
}


def get_preset(name: str) -> SurveyConfig:
    """Return the named preset; ``ValueError`` listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VisitImage:
    """One visit's new image of a sensor: ``new`` (ny, nx) float32 ADU and its header."""

    new: np.ndarray
    header: fits.Header
    exposure: str
    visit: int
    mjd: float
    seeing: float  # arcsec FWHM


@dataclass(frozen=True)
class FieldSensorSimulation:
    """Everything simulated for one (night, field, sensor).

    ``ref`` (ny, nx) float32 ADU; ``visits`` one per visit; ``catalog`` the survey's object
    catalogue from the ref; ``stars``/``galaxies``/``events``/``artifacts`` truth tables
    with one row per exposure (x, y 0-based in that exposure's new image).
    """

    night: str
    field: int
    sensor: int
    sensor_id: str
    ref: np.ndarray
    ref_header: fits.Header
    visits: tuple[VisitImage, ...]
    catalog: pd.DataFrame
    stars: pd.DataFrame
    galaxies: pd.DataFrame
    events: pd.DataFrame
    artifacts: pd.DataFrame
    ref_offset: tuple[float, float]  # true (dx, dy) px of the ref's pixels vs its header WCS


# ----------------------------------------------------------------------------- helpers


def parse_night(night: str) -> _dt.date:
    """Parse ``YYYY-MM-DD``; ``ValueError`` naming ``night`` otherwise."""
    try:
        return _dt.date.fromisoformat(night)
    except (TypeError, ValueError):
        raise ValueError(f"night: expected 'YYYY-MM-DD', got {night!r}") from None


def exposure_id(night: str, visit: int, field: int) -> str:
    """Exposure id unique across nights and sorting in time order."""
    return f"{night.replace('-', '')}{visit:02d}{field:03d}"


def sensor_id(sensor: int) -> str:
    return f"{sensor:02d}"


def _sensor_center(config: SurveyConfig, field: int, sensor: int) -> tuple[float, float]:
    """(ra, dec) in deg of the centre of a sensor: fields along RA, sensors on a grid."""
    ncol = int(math.ceil(math.sqrt(config.n_sensors)))
    nrow = int(math.ceil(config.n_sensors / ncol))
    w = config.nx * config.pixel_scale / 3600.0 * 1.05
    h = config.ny * config.pixel_scale / 3600.0 * 1.05
    ra0, dec0 = config.sky_center
    col, row = sensor % ncol, sensor // ncol
    dx = (col - (ncol - 1) / 2) * w + field * ncol * w * 1.1
    dy = (row - (nrow - 1) / 2) * h
    dec = dec0 + dy
    ra = (ra0 + dx / math.cos(math.radians(dec))) % 360.0
    return ra, dec


def sensor_wcs(config: SurveyConfig, field: int, sensor: int, offset: tuple[float, float] = (0.0, 0.0)) -> WCS:
    """TAN WCS of a sensor; ``offset`` (dx, dy) px moves the sky on the pixel grid."""
    ra, dec = _sensor_center(config, field, sensor)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(config.nx + 1) / 2 + offset[0], (config.ny + 1) / 2 + offset[1]]
    s = config.pixel_scale / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w


def _powerlaw_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """n magnitudes with density proportional to 10**(slope * m) on [lo, hi]."""
    a, b = 10 ** (slope * (lo - hi)), 1.0
    u = rng.uniform(a, b, n)
    return hi + np.log10(u) / slope


def _n_powerlaw(density: float, mref: float, slope: float, lo: float, hi: float, area: float) -> float:
    """Expected count in [lo, hi] given density (per deg^2) brighter than mref."""
    return density * area * (10 ** (slope * (hi - mref)) - 10 ** (slope * (lo - mref)))


def _flux(config: SurveyConfig, mag) -> np.ndarray:
    return 10 ** (-0.4 * (np.asarray(mag, float) - config.zeropoint))


# Looser than galsim's defaults (5e-3, 1e-3): the per-galaxy FFT falls from ~10 ms to ~2.4 ms
# (60 Sersic x Moffat galaxies) while fluxes change by < 0.1 %.
_GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=3e-3)


def _psf_profile(config: SurveyConfig, seeing_arcsec: float) -> galsim.Moffat:
    """Moffat PSF in pixel units, truncated at 6 FWHM (beta=3 loses < 0.1 % of the flux there)."""
    fwhm = seeing_arcsec / config.pixel_scale
    return galsim.Moffat(beta=config.moffat_beta, fwhm=fwhm, trunc=6 * fwhm, gsparams=_GSPARAMS)


def _point_psf(moffat: galsim.GSObject, fwhm: float | None = None) -> galsim.InterpolatedImage:
    # Pixel-integrated PSF drawn once at 4x oversampling: drawing a star from it costs
    # 0.14 ms vs 1.5 ms for galsim's per-star FFT convolution (300 stars, 2000x1128).
    n = int(2 * math.ceil(8 * (moffat.fwhm if fwhm is None else fwhm)) * 4 + 1)
    with warnings.catch_warnings():  # FFT is faster than galsim's suggested real-space here
        warnings.simplefilter("ignore", galsim.GalSimWarning)
        img = galsim.Convolve(moffat, galsim.Pixel(1.0), real_space=False).drawImage(nx=n, ny=n, scale=0.25, method="no_pixel")
    return galsim.InterpolatedImage(img, x_interpolant="lanczos5", normalization="flux")


def _draw_points(img: galsim.Image, psf: galsim.GSObject, x, y, flux, fwhm_px: float) -> None:
    """Add point sources at 0-based (x, y) with total ``flux`` ADU into ``img`` (in place)."""
    for xi, yi, fi in zip(x, y, flux):
        if fi <= 0:
            continue
        h = int(np.clip(3 * fwhm_px * (1 + max(0.0, math.log10(fi / 1e4))), 8, 80))
        gx, gy = xi + 1.0, yi + 1.0
        ix, iy = int(round(gx)), int(round(gy))
        b = galsim.BoundsI(ix - h, ix + h, iy - h, iy + h) & img.bounds
        if not b.isDefined():
            continue
        psf.withFlux(float(fi)).drawImage(image=img[b], center=galsim.PositionD(gx, gy),
                                          add_to_image=True, method="no_pixel")


def _draw_galaxies(img: galsim.Image, moffat: galsim.GSObject, gal: pd.DataFrame, xcol: str, ycol: str,
                   fwhm: float | None = None) -> None:
    fwhm = moffat.fwhm if fwhm is None else fwhm
    for row in gal.itertuples(index=False):
        x, y = getattr(row, xcol), getattr(row, ycol)
        prof = galsim.Sersic(n=float(row.sersic_n), half_light_radius=float(row.r_half_px), flux=float(row.flux_adu),
                             trunc=6 * float(row.r_half_px), gsparams=_GSPARAMS)
        prof = prof.shear(g=float(row.ellipticity), beta=float(row.theta) * galsim.radians)
        h = int(np.clip(4 * row.r_half_px + 3 * fwhm, 12, 96))
        gx, gy = x + 1.0, y + 1.0
        ix, iy = int(round(gx)), int(round(gy))
        b = galsim.BoundsI(ix - h, ix + h, iy - h, iy + h) & img.bounds
        if not b.isDefined():
            continue
        galsim.Convolve(prof, moffat, gsparams=_GSPARAMS).drawImage(image=img[b], center=galsim.PositionD(gx, gy), add_to_image=True)


def _noisy(rng: np.random.Generator, model_adu: np.ndarray, gain: float, read_noise_e: float, saturation: float) -> np.ndarray:
    """Poisson (through ``gain``) + Gaussian read noise; clipped at saturation; float32 ADU."""
    electrons = rng.poisson(np.clip(model_adu, 0, None) * gain).astype(np.float64)
    if read_noise_e > 0:
        electrons += rng.normal(0.0, read_noise_e, model_adu.shape)
    return np.minimum(electrons / gain, saturation).astype(np.float32)


def _header(config: SurveyConfig, wcs: WCS, *, exposure: str, sensor: int, field: int, visit: int,
            night: str, mjd: float, gain: float, read_noise: float, seeing: float, ncombine: int) -> fits.Header:
    h = fits.Header()
    h["EXPOSURE"] = (exposure, "exposure id")
    h["SENSOR"] = (sensor_id(sensor), "sensor id")
    h["FIELD"] = (field, "field index")
    h["VISIT"] = (visit, "visit of the field in the night (-1: reference)")
    h["NIGHT"] = (night, "night (YYYY-MM-DD)")
    h["MJD-OBS"] = (round(mjd, 8), "MJD at exposure start")
    h["DATE-OBS"] = (Time(mjd, format="mjd", scale="utc").isot, "UTC at exposure start")
    h["EXPTIME"] = (config.exptime, "s")
    h["GAIN"] = (gain, "e-/ADU")
    h["RDNOISE"] = (read_noise, "e-")
    h["SATURATE"] = (config.saturation, "ADU")
    h["MAGZP"] = (config.zeropoint, "mag of 1 ADU total")
    h["SEEING"] = (round(seeing, 4), "arcsec FWHM")
    h["PIXSCALE"] = (config.pixel_scale, "arcsec/px")
    h["FILTER"] = config.filter
    h["NCOMBINE"] = (ncombine, "exposures averaged")
    h["TELESCOP"] = config.name
    h.update(wcs.to_header())
    return h


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in _STR_COLS else float) for c in columns})


_STR_COLS = {"night", "exposure", "sensor", "kind", "event_id", "artifact_id", "star_id", "galaxy_id",
             "host_id", "obj_id", "scope"}
_BASE = ["night", "exposure", "sensor", "field", "visit", "mjd", "x", "y", "ra", "dec", "mag", "flux_adu", "kind"]
# artifact truth: extent_px (radius of a point artifact or annulus, length of a line), angle (rad from
# +x of a line / box; NaN: point-like), width_px (half-width of a line / box / annulus; 0 and no
# angle: a disc of radius extent_px), scope (see ARTIFACT_KINDS)
_ART_EXTRA = ["artifact_id", "extent_px", "angle", "width_px", "scope"]


# ----------------------------------------------------------------------------- static sky


def _static_sky(config: SurveyConfig, field: int, sensor: int, seed: int):
    """Stars, galaxies (world coords + shapes) and the ref's true offset for (field, sensor)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, field, sensor]))
    area = config.sensor_area_deg2
    wcs = sensor_wcs(config, field, sensor)
    margin = 10.0
    # stars
    lo, hi = config.star_mag_range
    n = rng.poisson(_n_powerlaw(config.star_density, config.star_mag_ref, config.star_slope, lo, hi, area))
    sx = rng.uniform(-margin, config.nx - 1 + margin, n)
    sy = rng.uniform(-margin, config.ny - 1 + margin, n)
    smag = _powerlaw_mags(rng, n, lo, hi, config.star_slope)
    sra, sdec = wcs.all_pix2world(sx, sy, 0)
    stars = pd.DataFrame({
        "star_id": [f"f{field:03d}s{sensor:02d}-s{i:05d}" for i in range(n)],
        "ra": sra, "dec": sdec, "mag": smag,
    })
    # galaxies
    lo, hi = config.galaxy_mag_range
    ng = rng.poisson(config.galaxy_density * area)
    gx = rng.uniform(-margin, config.nx - 1 + margin, ng)
    gy = rng.uniform(-margin, config.ny - 1 + margin, ng)
    gmag = _powerlaw_mags(rng, ng, lo, hi, config.galaxy_slope)
    gra, gdec = wcs.all_pix2world(gx, gy, 0)
    med, sig = config.r_half_arcsec
    r_half = np.clip(med * np.exp(sig * rng.standard_normal(ng)), 0.3, 6 * med) / config.pixel_scale
    galaxies = pd.DataFrame({
        "galaxy_id": [f"f{field:03d}s{sensor:02d}-g{i:05d}" for i in range(ng)],
        "ra": gra, "dec": gdec, "mag": gmag,
        "sersic_n": rng.choice(np.asarray(config.sersic_n, float), ng) if ng else np.zeros(0),
        "r_half_px": r_half,
        "ellipticity": rng.uniform(0, config.ellipticity_max, ng),
        "theta": rng.uniform(0, np.pi, ng),
    })
    offset = tuple(float(v) for v in rng.normal(0.0, config.misregistration_px, 2))
    return stars, galaxies, offset


# ----------------------------------------------------------------------------- main entry


def simulate_field_sensor(config: SurveyConfig, night: str, field: int, sensor: int, seed: int) -> FieldSensorSimulation:
    """Simulate the reference and every visit of one sensor of one field on one night.

    Returns a :class:`FieldSensorSimulation` (images (ny, nx) float32 ADU, headers, truth).
    """
    day = parse_night(night)
    if not 0 <= field < config.n_fields:
        raise ValueError(f"field: {field} outside 0..{config.n_fields - 1}")
    if not 0 <= sensor < config.n_sensors:
        raise ValueError(f"sensor: {sensor} outside 0..{config.n_sensors - 1}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    ordinal = day.toordinal()
    sid = sensor_id(sensor)
    stars, galaxies, ref_offset = _static_sky(config, field, sensor, seed)
    # static realism extras (crowded patch, ref masks / edges, which bright stars spike / bleed /
    # ghost) from their own stream, so that the old streams -- and, with the rates at 0, the old
    # images -- are unchanged
    srng = np.random.default_rng(np.random.SeedSequence([seed, 3, field, sensor]))
    crowd = None
    if config.crowded_rate > 0 and srng.uniform() < config.crowded_rate and config.crowded_stars > 0:
        R = float(srng.uniform(*config.crowded_radius_px))
        cxy = (float(srng.uniform(R / 2, config.nx - R / 2)), float(srng.uniform(R / 2, config.ny - R / 2)))
        n = config.crowded_stars
        rr, ph = R * np.sqrt(srng.uniform(0, 1, n)), srng.uniform(0, 2 * np.pi, n)
        lo, hi = config.star_mag_range
        cra, cdec = sensor_wcs(config, field, sensor).all_pix2world(cxy[0] + rr * np.cos(ph), cxy[1] + rr * np.sin(ph), 0)
        extra = pd.DataFrame({"star_id": [f"f{field:03d}s{sensor:02d}-c{i:05d}" for i in range(n)], "ra": cra,
                              "dec": cdec, "mag": _powerlaw_mags(srng, n, lo, hi, config.star_slope)})
        stars = pd.concat([stars, extra], ignore_index=True)
        crowd = (cxy, R)
    stars["flux_adu"] = _flux(config, stars["mag"])
    galaxies["flux_adu"] = _flux(config, galaxies["mag"])
    if config.spike_rate or config.bleed_rate or config.halo_rate:
        u_star = srng.uniform(size=(3, len(stars)))
        spiky, bleeds, halos = (u_star[0] < config.spike_rate, u_star[1] < config.bleed_rate,
                                u_star[2] < config.halo_rate)
    else:
        spiky = bleeds = halos = np.zeros(len(stars), bool)
    sat = float(config.saturation)
    sky_sig = _sky_sigma(config)
    spike_angle = math.radians(config.spike_angle_deg)

    # ---- reference (static: depends on seed, field, sensor only)
    nominal = sensor_wcs(config, field, sensor)
    true_ref_wcs = sensor_wcs(config, field, sensor, ref_offset)
    rng_ref = np.random.default_rng(np.random.SeedSequence([seed, 1, field, sensor]))
    ref_moffat = _psf_profile(config, config.ref_seeing)
    ref_img = galsim.Image(config.nx, config.ny, scale=1.0, dtype=np.float64)
    rx, ry = true_ref_wcs.all_world2pix(stars["ra"], stars["dec"], 0)
    _draw_points(ref_img, _point_psf(ref_moffat), rx, ry, stars["flux_adu"], ref_moffat.fwhm)
    grx, gry = true_ref_wcs.all_world2pix(galaxies["ra"], galaxies["dec"], 0)
    gal_ref = galaxies.assign(xr=grx, yr=gry)
    _draw_galaxies(ref_img, ref_moffat, gal_ref, "xr", "yr")
    ref_peak = stars["flux_adu"].to_numpy() * _peak_frac(config, ref_moffat.fwhm)
    sel = spiky & (ref_peak >= config.bright_star_peak * sat)
    if sel.any() and config.ref_spike_scale > 0:
        _add_spikes(ref_img.array, rx[sel], ry[sel], ref_peak[sel], ref_moffat.fwhm,
                    config.spike_strength * config.ref_spike_scale,
                    spike_angle + math.radians(config.ref_spike_rotation_deg), sky_sig / math.sqrt(config.ref_n_stack))
    g_ref = config.gain * config.ref_n_stack
    rn_ref = config.read_noise * math.sqrt(config.ref_n_stack)
    ref = _noisy(rng_ref, ref_img.array + config.sky_level, g_ref, rn_ref, config.saturation)
    sel = bleeds & (ref_peak >= sat)
    if sel.any():
        _add_bleeds(ref, ref_img.array + config.sky_level, rx[sel], ry[sel], ref_moffat.fwhm, sat)
        np.minimum(ref, np.float32(sat), out=ref)
    ref_sig = math.sqrt(config.sky_level / g_ref + (rn_ref / g_ref) ** 2)
    ref_boxes = []  # (kind, x0, x1, y0, y1) in ref pixels
    for _ in range(int(srng.poisson(config.ref_mask_rate)) if config.ref_mask_rate else 0):
        w, h = srng.uniform(*config.ref_mask_size_px, 2)
        x0, y0 = srng.uniform(0, config.nx - w), srng.uniform(0, config.ny - h)
        b = (int(x0), int(x0 + w), int(y0), int(y0 + h))
        ref[b[2]:b[3], b[0]:b[1]] = (config.sky_level + ref_sig * srng.standard_normal((b[3] - b[2], b[1] - b[0]))).astype(np.float32)
        ref_boxes.append(("masked_ref",) + b)
    if config.ref_edge_rate and srng.uniform() < config.ref_edge_rate:
        for side in srng.choice(4, int(srng.integers(1, 3)), replace=False):
            w = int(srng.uniform(*config.ref_edge_px))
            b = [(0, w, 0, config.ny), (config.nx - w, config.nx, 0, config.ny), (0, config.nx, 0, w),
                 (0, config.nx, config.ny - w, config.ny)][int(side)]
            shape = (b[3] - b[2], b[1] - b[0])
            ref[b[2]:b[3], b[0]:b[1]] += (ref_sig * (3 * srng.standard_normal(shape) + srng.uniform(-1, 1))).astype(np.float32)
            ref_boxes.append(("ref_edge",) + b)
    ref_header = _header(config, nominal, exposure=f"ref-f{field:03d}", sensor=sensor, field=field, visit=-1,
                         night="", mjd=REF_MJD, gain=g_ref, read_noise=rn_ref, seeing=config.ref_seeing,
                         ncombine=config.ref_n_stack)

    # catalogue: positions through the ref's header WCS
    cx, cy = nominal.all_world2pix(stars["ra"], stars["dec"], 0)
    gcx, gcy = nominal.all_world2pix(galaxies["ra"], galaxies["dec"], 0)
    cat = pd.concat([
        pd.DataFrame({"obj_id": stars["star_id"], "ra": stars["ra"], "dec": stars["dec"], "x": cx, "y": cy,
                      "mag": stars["mag"], "extended": False, "r_half_px": 0.0, "ellipticity": 0.0,
                      "theta": 0.0, "kind": "star"}),
        pd.DataFrame({"obj_id": galaxies["galaxy_id"], "ra": galaxies["ra"], "dec": galaxies["dec"], "x": gcx,
                      "y": gcy, "mag": galaxies["mag"], "extended": True, "r_half_px": galaxies["r_half_px"],
                      "ellipticity": galaxies["ellipticity"], "theta": galaxies["theta"], "kind": "galaxy"}),
    ], ignore_index=True)
    inside = (cat["x"] >= -0.5) & (cat["x"] < config.nx - 0.5) & (cat["y"] >= -0.5) & (cat["y"] < config.ny - 0.5)
    catalog = cat[inside].reset_index(drop=True)
    catalog["extended"] = catalog["extended"].astype(bool)

    # ---- nightly events (depend on seed, night, field, sensor)
    rng = np.random.default_rng(np.random.SeedSequence([seed, ordinal, field, sensor]))
    mjd0 = Time(day.isoformat() + "T12:00:00", scale="utc").mjd
    events = _draw_events(config, rng, stars, galaxies, nominal, night, field, sensor, mjd0)
    hot, badcol = _draw_static_artifacts(config, rng)
    nrng = np.random.default_rng(np.random.SeedSequence([seed, ordinal, field, sensor, 9999]))
    events = _realism_events(config, nrng, events, galaxies, nominal, night, field, sensor, mjd0)
    pattern_amp = 0.0
    if config.pattern_noise_rate and nrng.uniform() < config.pattern_noise_rate:
        pattern_amp = float(nrng.uniform(*config.pattern_noise_adu)) * sky_sig
    nd = int(nrng.poisson(config.dead_pixel_rate)) if config.dead_pixel_rate else 0
    dead = (nrng.integers(0, config.nx - 2, nd), nrng.integers(0, config.ny - 1, nd), nrng.integers(1, 4, nd),
            nrng.integers(1, 3, nd), nrng.uniform(0.0, 0.3, nd))  # x, y, width, height (px), sky fraction left
    shift = np.zeros((len(stars), 2))
    if config.dipole_rate:
        moved = nrng.uniform(size=len(stars)) < config.dipole_rate
        d, a = nrng.uniform(*config.dipole_shift_px, len(stars)), nrng.uniform(0, 2 * np.pi, len(stars))
        shift[moved] = np.c_[d * np.cos(a), d * np.sin(a)][moved]
    else:
        moved = np.zeros(len(stars), bool)
    star_gain = 1.0 + config.star_flux_scatter * nrng.standard_normal(len(stars)) if config.star_flux_scatter else None

    visits: list[VisitImage] = []
    star_rows, gal_rows, ev_rows, art_rows = [], [], [], []
    for visit in range(config.n_visits):
        exp = exposure_id(night, visit, field)
        mjd = mjd0 + visit * config.visit_interval_min / 1440.0 + field * config.field_time_s / 86400.0
        prng = np.random.default_rng(np.random.SeedSequence([seed, ordinal, field, 100000 + visit]))
        jitter = tuple(float(v) for v in prng.normal(0.0, config.pointing_jitter_px, 2))
        seeing = float(prng.uniform(*config.seeing_range))
        vrng = np.random.default_rng(np.random.SeedSequence([seed, ordinal, field, sensor, 1 + visit]))
        arng = np.random.default_rng(np.random.SeedSequence([seed, ordinal, field, sensor, 1 + visit, 1]))
        wcs = sensor_wcs(config, field, sensor, jitter)
        moffat = _psf_profile(config, seeing)
        fwhm = moffat.fwhm
        shear = None
        if config.tracking_error_rate:  # shared by all sensors of the exposure
            trng = np.random.default_rng(np.random.SeedSequence([seed, ordinal, field, 200000 + visit]))
            if trng.uniform() < config.tracking_error_rate:
                shear = (float(trng.uniform(*config.tracking_error_shear)), float(trng.uniform(0, np.pi)))
        prof = moffat if shear is None else moffat.shear(g=shear[0], beta=shear[1] * galsim.radians)
        psf = _point_psf(prof, fwhm)
        img = galsim.Image(config.nx, config.ny, scale=1.0, dtype=np.float64)
        common = dict(night=night, exposure=exp, sensor=sid, field=field, visit=visit, mjd=mjd)
        extra_art: list[dict] = []

        def aid(tag, i):
            return f"{exp}-s{sensor:02d}-{tag}{i:03d}"

        x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
        x, y = x + shift[:, 0], y + shift[:, 1]
        flux = stars["flux_adu"].to_numpy().copy()
        if star_gain is not None:
            flux *= np.clip(star_gain, 0.5, 1.5)
        var = events[events["kind"] == "variable"]
        if len(var):
            idx = stars.index.get_indexer(var["star_index"].astype(int))
            flux[idx] += var["delta_flux_adu"].to_numpy()
        zone_psf = _zone_psfs(config, psf, fwhm, x, y) if config.psf_variation > 0 else None
        if zone_psf is None:
            _draw_points(img, psf, x, y, flux, fwhm)
        else:
            for zpsf, zf, m in zone_psf:
                _draw_points(img, zpsf, x[m], y[m], flux[m], zf)
        ext = _radius_above(config, flux * _peak_frac(config, fwhm), 5 * sky_sig, fwhm)
        star_rows.append(stars[["star_id", "ra", "dec", "mag", "flux_adu"]].assign(x=x, y=y, extent_px=ext,
                                                                                  kind="star", **common))

        gx, gy = wcs.all_world2pix(galaxies["ra"], galaxies["dec"], 0)
        gal_v = galaxies.assign(x=gx, y=gy)
        _draw_galaxies(img, prof, gal_v, "x", "y", fwhm)
        gal_rows.append(gal_v.assign(kind="galaxy", **common))

        ev = events[events["kind"] != "variable"]
        ex, ey = _event_positions(config, ev, wcs, mjd)
        trail = _trail_px(config, ev)
        ev_angle = np.arctan2(ev["vy"].to_numpy(float), ev["vx"].to_numpy(float)) if len(ev) else np.zeros(0)
        pts = trail <= 1.0
        if zone_psf is None:
            _draw_points(img, psf, ex[pts], ey[pts], ev["flux_adu"].to_numpy()[pts], fwhm)
        else:
            for zpsf, zf, m in _zone_psfs(config, psf, fwhm, ex, ey, psfs=zone_psf):
                _draw_points(img, zpsf, ex[m & pts], ey[m & pts], ev["flux_adu"].to_numpy()[m & pts], zf)
        tx, ty = ex.copy(), ey.copy()
        for j in np.flatnonzero(~pts):  # trailed asteroids: points every 0.5 px along the exposure's motion
            k = int(math.ceil(trail[j] / 0.5)) + 1
            f = np.linspace(0, 1, k)
            c, s = math.cos(ev_angle[j]), math.sin(ev_angle[j])
            _draw_points(img, psf, ex[j] + f * trail[j] * c, ey[j] + f * trail[j] * s,
                         np.full(k, ev["flux_adu"].iloc[j] / k), fwhm)
            tx[j], ty[j] = ex[j] + 0.5 * trail[j] * c, ey[j] + 0.5 * trail[j] * s
        ev_v = ev.assign(x=tx, y=ty, extent_px=np.where(pts, 0.0, trail), angle=np.where(pts, np.nan, ev_angle))
        vx, vy = wcs.all_world2pix(var["ra"], var["dec"], 0) if len(var) else (np.zeros(0), np.zeros(0))
        if len(var):  # a variable star that is also displaced (dipole_rate) sits where it is drawn
            vi = stars.index.get_indexer(var["star_index"].astype(int))
            vx, vy = vx + shift[vi, 0], vy + shift[vi, 1]
        ev_v = pd.concat([ev_v, var.assign(x=vx, y=vy, extent_px=0.0, angle=np.nan)], ignore_index=True) if len(var) else ev_v
        ev_v = ev_v.assign(**common)
        ev_v = ev_v[(ev_v["x"] >= -0.5) & (ev_v["x"] < config.nx - 0.5)
                    & (ev_v["y"] >= -0.5) & (ev_v["y"] < config.ny - 0.5)]
        ev_rows.append(ev_v)

        # bright stars: spikes and ghosts (photons: before the noise), saturated cores and bleeds
        on = (x > -20) & (x < config.nx + 20) & (y > -20) & (y < config.ny + 20)
        peak = flux * _peak_frac(config, fwhm)
        sel = spiky & on & (peak >= config.bright_star_peak * sat)
        r_core = _radius_above(config, peak[sel], sat, fwhm) + 1.5 * fwhm  # the star's own core
        for n, sx, sy, L in _add_spikes(img.array, x[sel], y[sel], peak[sel], fwhm, config.spike_strength,
                                        spike_angle, sky_sig):
            r0, i = min(float(r_core[n]), L - 1), n
            for k in range(4):  # one row per arm, from the edge of the core to the tip
                a = spike_angle + k * math.pi / 2
                rm = (r0 + L) / 2
                extra_art.append(dict(kind="diffraction_spike", x=sx + rm * math.cos(a), y=sy + rm * math.sin(a),
                                      flux_adu=np.nan, extent_px=L - r0, angle=a, width_px=fwhm / 2,
                                      scope="point", artifact_id=aid("spk", 4 * i + k)))
        sel = halos & on & (peak >= config.bright_star_peak * sat)
        if sel.any():
            hf = nrng.uniform(*config.halo_flux_fraction, int(sel.sum()))
            hr = nrng.uniform(*config.halo_radius_px, int(sel.sum()))
            for i, (hx, hy, R, f) in enumerate(_add_halos(img.array, x[sel], y[sel], flux[sel], hf, hr,
                                                          ((config.nx - 1) / 2, (config.ny - 1) / 2))):
                extra_art.append(dict(kind="halo", x=hx, y=hy, flux_adu=f, extent_px=R, angle=np.nan,
                                      width_px=0.3 * R, scope="point", artifact_id=aid("hal", i)))  # an annulus
        for i in range(int(arng.poisson(config.satellite_rate)) if config.satellite_rate else 0):
            x0, y0, a = arng.uniform(0, config.nx), arng.uniform(0, config.ny), arng.uniform(0, np.pi)
            sig = fwhm / 2.3548 * arng.uniform(1.0, 2.5)  # LEO satellites are slightly out of focus
            amp = float(arng.uniform(*config.satellite_adu))
            rr, cc, val, bb = _trail_columns(img.array.shape, x0, y0, a, sig, amp, arng)
            np.add.at(img.array, (rr, cc), val)
            if bb is not None:
                L = math.hypot(bb[1] - bb[0], bb[3] - bb[2])
                extra_art.append(dict(kind="satellite_trail", x=(bb[0] + bb[1]) / 2, y=(bb[2] + bb[3]) / 2,
                                      flux_adu=amp, extent_px=L, angle=a, width_px=3 * sig + 1, scope="point",
                                      artifact_id=aid("sat", i)))

        model = img.array + config.sky_level
        new = _noisy(vrng, model, config.gain, config.read_noise, np.inf)
        arts = _apply_artifacts(config, vrng, new, hot, badcol, common, wcs, field, sensor)
        for i in range(int(arng.poisson(config.cosmic_ray_track_rate)) if config.cosmic_ray_track_rate else 0):
            L, a = float(arng.uniform(5, 40)), float(arng.uniform(0, np.pi))
            cx0, cy0 = arng.uniform(0, config.nx), arng.uniform(0, config.ny)
            t = np.arange(-L / 2, L / 2, 0.5)
            px = np.round(cx0 + t * math.cos(a)).astype(int)
            py = np.round(cy0 + t * math.sin(a)).astype(int)
            ok = (px >= 0) & (px < config.nx) & (py >= 0) & (py < config.ny)
            pix = np.unique(np.c_[py[ok], px[ok]], axis=0)
            if not len(pix):
                continue
            pk = float(arng.uniform(*config.cosmic_ray_adu))
            new[pix[:, 0], pix[:, 1]] += (pk * arng.uniform(0.3, 1.0, len(pix))).astype(np.float32)
            extra_art.append(dict(kind="cosmic_ray", x=float(cx0), y=float(cy0), flux_adu=pk, extent_px=L, angle=a,
                                  width_px=1.0, scope="point", artifact_id=aid("trk", i)))
        for i, (dx_, dy_, w_, h_, f_) in enumerate(zip(*dead)):
            new[dy_:dy_ + h_, dx_:dx_ + w_] = np.float32(f_ * config.sky_level)
            extra_art.append(dict(kind="dead_pixel", x=dx_ + (w_ - 1) / 2, y=dy_ + (h_ - 1) / 2,
                                  flux_adu=-config.sky_level, extent_px=float(max(w_, h_)), angle=np.nan,
                                  width_px=0.0, scope="point",
                                  artifact_id=f"{night}-f{field:03d}-s{sensor:02d}-dead{i:03d}"))
        if pattern_amp > 0:
            new += _pattern(new.shape, arng, pattern_amp)
            extra_art.append(dict(kind="pattern_noise", x=(config.nx - 1) / 2, y=(config.ny - 1) / 2,
                                  flux_adu=pattern_amp, extent_px=float(config.nx), angle=0.0,
                                  width_px=config.ny / 2, scope="background", artifact_id=aid("pat", 0)))
        sel = bleeds & on & (peak >= sat)
        if sel.any():
            for i, (bx, by, L, nc) in enumerate(_add_bleeds(new, model, x[sel], y[sel], fwhm, sat)):
                extra_art.append(dict(kind="bleed_trail", x=bx, y=by, flux_adu=sat, extent_px=L, angle=math.pi / 2,
                                      width_px=nc / 2 + 0.5, scope="point", artifact_id=aid("blt", i)))
        sel = on & (peak >= sat) & config.saturated_star_truth
        for i, j in enumerate(np.flatnonzero(sel)):
            r = float(_radius_above(config, peak[j], sat, fwhm))
            extra_art.append(dict(kind="saturated_star", x=float(x[j]), y=float(y[j]), flux_adu=float(flux[j]),
                                  extent_px=r + fwhm, angle=np.nan, width_px=0.0, scope="point",
                                  artifact_id=aid("sst", i)))
        sel = moved & on & (peak >= 3 * sky_sig)
        for i, j in enumerate(np.flatnonzero(sel)):
            extra_art.append(dict(kind="dipole", x=float(x[j]), y=float(y[j]), flux_adu=float(flux[j]),
                                  extent_px=float(np.hypot(*shift[j]) + max(fwhm / 2, ext[j])), angle=np.nan, width_px=0.0,
                                  scope="point", artifact_id=aid("dip", i)))
        if shear is not None:
            extra_art.append(dict(kind="tracking_error", x=(config.nx - 1) / 2, y=(config.ny - 1) / 2,
                                  flux_adu=shear[0], extent_px=float(config.nx), angle=0.0, width_px=config.ny / 2,
                                  scope="area", artifact_id=aid("trk-err", 0)))
        if crowd is not None:
            (ccx, ccy), R = crowd
            wx, wy = nominal.all_pix2world([ccx], [ccy], 0)
            nx_, ny_ = wcs.all_world2pix(wx, wy, 0)
            extra_art.append(dict(kind="crowded_field", x=float(nx_[0]), y=float(ny_[0]), flux_adu=np.nan,
                                  extent_px=R, angle=np.nan, width_px=0.0, scope="area", artifact_id=aid("crw", 0)))
        for i, (kind, bx0, bx1, by0, by1) in enumerate(ref_boxes):
            wx, wy = true_ref_wcs.all_pix2world([(bx0 + bx1 - 1) / 2], [(by0 + by1 - 1) / 2], 0)
            nx_, ny_ = wcs.all_world2pix(wx, wy, 0)
            extra_art.append(dict(kind=kind, x=float(nx_[0]), y=float(ny_[0]), flux_adu=np.nan,
                                  extent_px=float(bx1 - bx0), angle=0.0, width_px=(by1 - by0) / 2,
                                  scope="area" if kind == "masked_ref" else "point", artifact_id=aid(kind[:5], i)))
        if extra_art:
            ea = _art_rows(extra_art)
            ea["ra"], ea["dec"] = wcs.all_pix2world(ea["x"].to_numpy(float), ea["y"].to_numpy(float), 0)
            ea = ea.assign(mag=np.nan, **common)
            arts = pd.concat([arts, ea[arts.columns]], ignore_index=True) if len(arts) else ea[arts.columns]
        np.minimum(new, np.float32(config.saturation), out=new)
        art_rows.append(arts)
        header = _header(config, wcs, exposure=exp, sensor=sensor, field=field, visit=visit, night=night, mjd=mjd,
                         gain=config.gain, read_noise=config.read_noise, seeing=seeing, ncombine=1)
        visits.append(VisitImage(new=new, header=header, exposure=exp, visit=visit, mjd=mjd, seeing=seeing))

    def _inside(df: pd.DataFrame) -> pd.DataFrame:
        ok = (df["x"] >= -0.5) & (df["x"] < config.nx - 0.5) & (df["y"] >= -0.5) & (df["y"] < config.ny - 0.5)
        return df[ok]

    stars_t = _inside(pd.concat(star_rows, ignore_index=True)).reset_index(drop=True)
    gal_t = _inside(pd.concat(gal_rows, ignore_index=True)).reset_index(drop=True)
    ev_cols = _BASE + ["event_id", "host_id", "host_offset_arcsec", "delta_flux_adu", "t_start_mjd", "extent_px", "angle"]
    ev_t = pd.concat(ev_rows, ignore_index=True)
    ev_t = ev_t[ev_cols].reset_index(drop=True) if len(ev_t) else _empty(ev_cols)
    art_t = pd.concat(art_rows, ignore_index=True) if art_rows else _empty(_BASE + _ART_EXTRA)
    return FieldSensorSimulation(
        night=night, field=field, sensor=sensor, sensor_id=sid, ref=ref, ref_header=ref_header,
        visits=tuple(visits), catalog=catalog,
        stars=stars_t[_BASE + ["star_id", "extent_px"]],
        galaxies=gal_t[_BASE + ["galaxy_id", "sersic_n", "r_half_px", "ellipticity", "theta"]],
        events=ev_t, artifacts=art_t.reset_index(drop=True), ref_offset=ref_offset,
    )


def _zone_psfs(config, prof, fwhm, x, y, nz: int = 4, psfs=None):
    """Field-varying PSF: nz radial zones (by r^2 from the sensor centre, r = 1 at a corner), zone k
    drawn with FWHM x (1 + psf_variation (k + 0.5) / nz). Returns [(psf, fwhm_k, mask of x, y)]."""
    cx, cy = (config.nx - 1) / 2, (config.ny - 1) / 2
    r2 = ((np.asarray(x) - cx) ** 2 + (np.asarray(y) - cy) ** 2) / (cx**2 + cy**2)
    zone = np.clip((r2 * nz).astype(int), 0, nz - 1)
    out = []
    for k in range(nz):
        if psfs is not None:
            zpsf, zf = psfs[k][0], psfs[k][1]
        else:
            fac = 1 + config.psf_variation * (k + 0.5) / nz
            zf = fwhm * fac
            # dilating the pixel-integrated PSF (instead of a new InterpolatedImage: 85 ms each)
            # also widens its pixel response by fac: a < 1 % FWHM error for fac <= 1.2
            zpsf = prof.dilate(fac)
        out.append((zpsf, zf, zone == k))
    return out


def _trail_px(config, ev: pd.DataFrame) -> np.ndarray:
    """Length (px) an event moves during one exposure (asteroids; 0 for the rest)."""
    if not len(ev):
        return np.zeros(0)
    return np.hypot(ev["vx"].to_numpy(float), ev["vy"].to_numpy(float)) * config.exptime / 60.0


def _realism_events(config, nrng, events, galaxies, wcs, night, field, sensor, mjd0) -> pd.DataFrame:
    """Fast (trailed) asteroids and host-tied SN magnitudes (their own stream: see simulate_field_sensor)."""
    ev = events.copy()
    if config.sn_host_dmag is not None and (ev["kind"] == "supernova").any():
        sn = ev["kind"] == "supernova"
        hmag = galaxies.set_index("galaxy_id")["mag"].reindex(ev.loc[sn, "host_id"]).to_numpy(float)
        mu, sig = config.sn_host_dmag
        mag = np.clip(hmag + nrng.normal(mu, sig, int(sn.sum())), *config.event_mag_range)
        ev.loc[sn, "mag"] = mag
        ev.loc[sn, "flux_adu"] = _flux(config, mag)
    rows = []
    for i in range(int(nrng.poisson(config.fast_asteroid_rate)) if config.fast_asteroid_rate else 0):
        v = int(nrng.integers(config.n_visits))
        speed = nrng.uniform(*config.fast_asteroid_speed) / config.pixel_scale
        ang = nrng.uniform(0, 2 * np.pi)
        x0, y0 = nrng.uniform(5, config.nx - 6), nrng.uniform(5, config.ny - 6)
        ra, dec = wcs.all_pix2world([x0], [y0], 0)
        mag = nrng.uniform(*config.event_mag_range)
        rows.append({"kind": "asteroid", "event_id": f"{night}-f{field:03d}-s{sensor:02d}-fast{i:03d}",
                     "host_id": None, "host_offset_arcsec": np.nan, "delta_flux_adu": np.nan,
                     "t_start_mjd": mjd0, "vx": speed * math.cos(ang), "vy": speed * math.sin(ang),
                     "star_index": -1, "x0": x0, "y0": y0, "mag": mag, "ra": float(ra[0]), "dec": float(dec[0]),
                     "flux_adu": float(_flux(config, mag)),
                     # on the sensor (near (x0, y0)) during visit v, not before or after
                     "mjd_ref": mjd0 + v * config.visit_interval_min / 1440.0 + field * config.field_time_s / 86400.0})
    if rows:
        ev = pd.concat([ev, pd.DataFrame(rows)[ev.columns]], ignore_index=True)
    return ev


def _draw_events(config, rng, stars, galaxies, wcs, night, field, sensor, mjd0) -> pd.DataFrame:
    """Nightly events in world coordinates (asteroids: position at mjd0 and velocity)."""
    rows = []
    scale = config.pixel_scale
    lo, hi = config.event_mag_range

    def base(kind, i):
        return {"kind": kind, "event_id": f"{night}-f{field:03d}-s{sensor:02d}-{kind[:3]}{i:03d}",
                "host_id": None, "host_offset_arcsec": np.nan, "delta_flux_adu": np.nan,
                "t_start_mjd": mjd0 - rng.uniform(0, config.event_age_days), "vx": 0.0, "vy": 0.0,
                "star_index": -1}

    in_gal = galaxies[(galaxies["ra"].notna())]
    gx, gy = wcs.all_world2pix(in_gal["ra"], in_gal["dec"], 0) if len(in_gal) else (np.zeros(0), np.zeros(0))
    ok = (gx > 5) & (gx < config.nx - 6) & (gy > 5) & (gy < config.ny - 6)
    hosts = in_gal[ok].assign(_x=gx[ok], _y=gy[ok])
    # hosts drawn without replacement: at most one transient per galaxy and night
    n_sn, n_nuc = rng.poisson(config.supernova_rate), rng.poisson(config.nuclear_rate)
    n_sn = min(n_sn, len(hosts))
    n_nuc = min(n_nuc, len(hosts) - n_sn)
    host_idx = iter(rng.permutation(len(hosts))[: n_sn + n_nuc])
    for kind, n in (("supernova", n_sn), ("nuclear", n_nuc)):
        for i in range(n):
            h = hosts.iloc[int(next(host_idx))]
            r = 0.0 if kind == "nuclear" else rng.gamma(2.0, h["r_half_px"] / 1.678) * config.sn_offset_scale
            phi = rng.uniform(0, 2 * np.pi)
            q = (1 - h["ellipticity"]) / (1 + h["ellipticity"])
            u, v = r * np.cos(phi) / math.sqrt(q), r * np.sin(phi) * math.sqrt(q)
            c, s = math.cos(h["theta"]), math.sin(h["theta"])
            x, y = h["_x"] + c * u - s * v, h["_y"] + s * u + c * v
            d = base(kind, i)
            d.update(x0=x, y0=y, mag=rng.uniform(lo, hi), host_id=h["galaxy_id"],
                     host_offset_arcsec=float(math.hypot(x - h["_x"], y - h["_y"]) * scale))
            rows.append(d)
    for i in range(rng.poisson(config.hostless_rate)):
        d = base("hostless", i)
        d.update(x0=rng.uniform(5, config.nx - 6), y0=rng.uniform(5, config.ny - 6), mag=rng.uniform(lo, hi))
        rows.append(d)
    sx, sy = wcs.all_world2pix(stars["ra"], stars["dec"], 0) if len(stars) else (np.zeros(0), np.zeros(0))
    cand = np.flatnonzero((sx > 5) & (sx < config.nx - 6) & (sy > 5) & (sy < config.ny - 6)
                          & (stars["mag"].to_numpy() < config.event_mag_range[1] + 1))
    nvar = min(rng.poisson(config.variable_rate), len(cand))
    for i, j in enumerate(rng.choice(cand, nvar, replace=False) if nvar else []):
        dm = rng.uniform(0.2, 1.0) * config.variable_amp * rng.choice([-1.0, 1.0])
        f0 = float(stars["flux_adu"].iloc[j])
        d = base("variable", i)
        d.update(x0=sx[j], y0=sy[j], mag=float(stars["mag"].iloc[j] + dm), star_index=int(stars.index[j]),
                 delta_flux_adu=f0 * (10 ** (-0.4 * dm) - 1), host_id=stars["star_id"].iloc[j])
        rows.append(d)
    for i in range(rng.poisson(config.asteroid_rate)):
        d = base("asteroid", i)
        speed = rng.uniform(*config.asteroid_speed) / scale  # px / min
        ang = rng.uniform(0, 2 * np.pi)
        d.update(x0=rng.uniform(5, config.nx - 6), y0=rng.uniform(5, config.ny - 6), mag=rng.uniform(lo, hi),
                 vx=speed * math.cos(ang), vy=speed * math.sin(ang))
        rows.append(d)
    cols = ["kind", "event_id", "host_id", "host_offset_arcsec", "delta_flux_adu", "t_start_mjd", "vx", "vy",
            "star_index", "x0", "y0", "mag"]
    ev = pd.DataFrame(rows, columns=cols)
    if len(ev):
        ev["ra"], ev["dec"] = wcs.all_pix2world(ev["x0"].to_numpy(float), ev["y0"].to_numpy(float), 0)
    else:
        ev["ra"], ev["dec"] = np.zeros(0), np.zeros(0)
    ev["flux_adu"] = _flux(config, ev["mag"])
    ev.loc[ev["kind"] == "variable", "flux_adu"] = ev.loc[ev["kind"] == "variable", "delta_flux_adu"]
    ev["mjd_ref"] = mjd0
    return ev


def _event_positions(config, ev: pd.DataFrame, wcs: WCS, mjd: float):
    if not len(ev):
        return np.zeros(0), np.zeros(0)
    x, y = wcs.all_world2pix(ev["ra"].to_numpy(float), ev["dec"].to_numpy(float), 0)
    dt_min = (mjd - ev["mjd_ref"].to_numpy(float)) * 1440.0
    return x + ev["vx"].to_numpy(float) * dt_min, y + ev["vy"].to_numpy(float) * dt_min


def _draw_static_artifacts(config: SurveyConfig, rng):
    """Hot pixels (x, y, adu) and bad column segments (x, y0, y1, adu) of this sensor-night."""
    nh = rng.poisson(config.hot_pixel_rate)
    hot = (rng.integers(0, config.nx, nh), rng.integers(0, config.ny, nh), rng.uniform(*config.hot_pixel_adu, nh))
    nb = rng.poisson(config.bad_column_rate)
    y0 = rng.integers(0, config.ny // 2, nb)
    bad = (rng.integers(0, config.nx, nb), y0, np.minimum(y0 + rng.integers(50, config.ny, nb), config.ny),
           rng.uniform(*config.bad_column_adu, nb))
    return hot, bad


def _apply_artifacts(config, rng, new, hot, bad, common, wcs, field, sensor) -> pd.DataFrame:
    """Add artifacts to ``new`` in place; return their truth rows (x, y 0-based)."""
    rows = []
    exp = common["exposure"]
    for i, (x, y, a) in enumerate(zip(*hot)):
        new[y, x] += a
        rows.append(dict(kind="hot_pixel", x=float(x), y=float(y), flux_adu=float(a), extent_px=1.0,
                         artifact_id=f"{common['night']}-f{field:03d}-s{sensor:02d}-hot{i:03d}"))
    for i, (x, y0, y1, a) in enumerate(zip(*bad)):
        new[y0:y1, x] += a
        rows.append(dict(kind="bad_column", x=float(x), y=float((y0 + y1 - 1) / 2), flux_adu=float(a),
                         extent_px=float(y1 - y0),
                         artifact_id=f"{common['night']}-f{field:03d}-s{sensor:02d}-col{i:03d}"))
    for i in range(rng.poisson(config.cosmic_ray_rate)):
        x, y = int(rng.integers(2, config.nx - 2)), int(rng.integers(2, config.ny - 2))
        peak = rng.uniform(*config.cosmic_ray_adu)
        length = int(rng.integers(1, 6))
        ang = rng.uniform(0, np.pi)
        pts = {(int(round(y + k * math.sin(ang))), int(round(x + k * math.cos(ang)))) for k in range(length)}
        for (py, px) in pts:
            if 0 <= py < config.ny and 0 <= px < config.nx:
                new[py, px] += peak * rng.uniform(0.5, 1.0)
        rows.append(dict(kind="cosmic_ray", x=float(x), y=float(y), flux_adu=float(peak), extent_px=float(length),
                         artifact_id=f"{exp}-s{sensor:02d}-cr{i:03d}"))
    cols = ["kind", "x", "y", "flux_adu", "extent_px", "artifact_id"]
    df = pd.DataFrame(rows, columns=cols)
    df["angle"] = np.where(df["kind"] == "bad_column", math.pi / 2, np.nan)
    df["width_px"] = 0.0
    df["scope"] = "point"
    if len(df):
        df["ra"], df["dec"] = wcs.all_pix2world(df["x"].to_numpy(float), df["y"].to_numpy(float), 0)
    else:
        df["ra"], df["dec"] = np.zeros(0), np.zeros(0)
    df["mag"] = np.nan
    df = df.assign(**common)
    return df[_BASE + _ART_EXTRA]


# ----------------------------------------------------------------------------- realism artifacts
# Each helper is vectorised over pixels (numpy patches) and loops only over the few affected
# objects; with every rate at 0 none of them draws a random number, so old images stay identical.

_ART_COLS = ["kind", "x", "y", "flux_adu", "extent_px", "angle", "width_px", "scope", "artifact_id"]


def _moffat_alpha(config: SurveyConfig, fwhm: float) -> float:
    return fwhm / (2 * math.sqrt(2 ** (1 / config.moffat_beta) - 1))


def _peak_frac(config: SurveyConfig, fwhm: float) -> float:
    """Central surface brightness / flux of the Moffat PSF (px^-2)."""
    return (config.moffat_beta - 1) / (math.pi * _moffat_alpha(config, fwhm) ** 2)


def _radius_above(config: SurveyConfig, peak, level, fwhm: float) -> np.ndarray:
    """Radius (px) inside which a Moffat of central value ``peak`` exceeds ``level`` (0 if never)."""
    ratio = np.asarray(peak, float) / max(float(level), 1e-12)
    r = _moffat_alpha(config, fwhm) * np.sqrt(np.clip(ratio, 1, None) ** (1 / config.moffat_beta) - 1)
    return np.where(ratio > 1, r, 0.0)


def _sky_sigma(config: SurveyConfig) -> float:
    return math.sqrt(config.sky_level / config.gain + (config.read_noise / config.gain) ** 2)


def _patch(shape, x: float, y: float, h: int):
    """Slices and relative coordinate grids (dx, dy) of a (2h+1)^2 box around (x, y) clipped to shape."""
    ny, nx = shape
    ix, iy = int(round(x)), int(round(y))
    x0, x1, y0, y1 = max(ix - h, 0), min(ix + h + 1, nx), max(iy - h, 0), min(iy + h + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), xx - x, yy - y


def _add_spikes(arr: np.ndarray, x, y, peak, fwhm: float, strength: float, angle: float,
                sky_sigma: float) -> list[tuple]:
    """Diffraction-spike crosses (surface brightness strength x peak x (FWHM / d)^2, Gaussian
    cross-section of the seeing) around each (x, y); returns (index, x, y, half_length) per star drawn."""
    out = []
    w = fwhm / 2.3548
    for n, (xi, yi, pk) in enumerate(zip(x, y, peak)):
        amp = strength * pk
        L = float(np.clip(fwhm * math.sqrt(max(amp, 0) / (0.5 * sky_sigma)), 2 * fwhm, 250.0))
        p = _patch(arr.shape, xi, yi, int(L) + 1)
        if p is None or amp <= 0:
            continue
        sl, dx, dy = p
        add = np.zeros(dx.shape)
        for a in (angle, angle + math.pi / 2):
            t = dx * math.cos(a) + dy * math.sin(a)
            q = -dx * math.sin(a) + dy * math.cos(a)
            near = np.abs(q) < 4 * w
            at = np.abs(t[near])
            add[near] += amp * (fwhm / np.maximum(at, fwhm)) ** 2 * np.exp(-0.5 * (q[near] / w) ** 2) * (at < L)
        arr[sl] += add
        out.append((n, float(xi), float(yi), L))
    return out


def _add_halos(arr: np.ndarray, x, y, flux, frac, radius, center) -> list[tuple]:
    """Reflection ghosts: Gaussian annuli (radius R, sigma 0.15 R) of frac x flux, shifted
    radially away from the optical axis by 5 % of the star's distance from it."""
    out = []
    cx, cy = center
    for xi, yi, f, fr, R in zip(x, y, flux, frac, radius):
        hx, hy = xi + 0.05 * (xi - cx), yi + 0.05 * (yi - cy)
        s = 0.15 * R
        p = _patch(arr.shape, hx, hy, int(R + 4 * s) + 1)
        if p is None:
            continue
        sl, dx, dy = p
        ring = np.exp(-0.5 * ((np.hypot(dx, dy) - R) / s) ** 2)
        norm = 2 * math.pi * R * s * math.sqrt(2 * math.pi)
        arr[sl] += f * fr * ring / norm
        out.append((float(hx), float(hy), float(R), float(f * fr)))
    return out


def _add_bleeds(new: np.ndarray, model: np.ndarray, x, y, fwhm: float, sat: float) -> list[tuple]:
    """CCD blooming: the charge above full well in each column of a saturated star runs up and
    down that column (total length = excess / saturation px); returns (x, y, length, ncols)."""
    out = []
    ny = new.shape[0]
    for xi, yi in zip(x, y):
        p = _patch(model.shape, xi, yi, int(4 * fwhm) + 2)
        if p is None:
            continue
        sl, _, _ = p
        sub = model[sl]
        over = np.clip(sub - sat, 0, None)
        cols = np.flatnonzero(over.sum(0) > 0)
        if not len(cols):
            continue
        ys, ye = [], []
        for c in cols:
            run = np.flatnonzero(sub[:, c] >= sat) + sl[0].start
            n = over[:, c].sum() / sat / 2  # px each way
            k = int(n)
            col = c + sl[1].start
            lo, hi = max(run.min() - k, 0), min(run.max() + k + 1, ny)
            new[lo:hi, col] = np.maximum(new[lo:hi, col], sat)
            fr = (n - k) * sat
            if lo - 1 >= 0:
                new[lo - 1, col] += fr
            if hi < ny:
                new[hi, col] += fr
            ys.append(lo - 1)
            ye.append(hi)
        y0, y1 = max(min(ys), 0), min(max(ye), ny - 1)
        out.append((float(xi), (y0 + y1) / 2, float(y1 - y0 + 1), len(cols)))
    return out


def _trail_columns(shape, x0, y0, angle, sigma, amp, rng=None):
    """Pixels and values of a straight trail across the whole image (Gaussian cross-section
    sigma, peak amp, +-30 % brightness modulation along it when rng is given)."""
    ny, nx = shape
    h = int(math.ceil(4 * sigma)) + 1
    c, s = math.cos(angle), math.sin(angle)
    if abs(c) >= abs(s):  # mostly horizontal: one run of rows per column
        u = np.arange(nx, dtype=float)
        v = y0 + (u - x0) * s / c
        k = np.arange(-h, h + 1)
        rows = np.round(v)[:, None] + k[None, :]
        dist = (rows - v[:, None]) * abs(c)
        cols = np.broadcast_to(u[:, None], rows.shape)
        along = u
    else:
        u = np.arange(ny, dtype=float)
        v = x0 + (u - y0) * c / s
        k = np.arange(-h, h + 1)
        cols = np.round(v)[:, None] + k[None, :]
        dist = (cols - v[:, None]) * abs(s)
        rows = np.broadcast_to(u[:, None], cols.shape)
        along = u
    ok = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    mod = 1.0 if rng is None else (1 + 0.3 * np.sin(2 * math.pi * along / rng.uniform(50, 400) + rng.uniform(0, 6.3)))[:, None]
    val = amp * mod * np.exp(-0.5 * (dist / sigma) ** 2)
    return rows[ok].astype(int), cols[ok].astype(int), val[ok], (cols[ok].min(), cols[ok].max(),
                                                                   rows[ok].min(), rows[ok].max()) if ok.any() else None


def _pattern(shape, rng, amp: float) -> np.ndarray:
    """Read-out pattern noise: a tilted sinusoid (herringbone, period 4-20 px) plus row banding."""
    ny, nx = shape
    kx, ky = 2 * math.pi / rng.uniform(4, 20), 2 * math.pi / rng.uniform(4, 20) * rng.choice([-1, 1])
    ph = rng.uniform(0, 2 * math.pi)
    xs, ys = np.arange(nx) * kx, np.arange(ny) * ky + ph
    pat = np.outer(np.cos(ys), np.sin(xs)) + np.outer(np.sin(ys), np.cos(xs))  # sin(kx x + ky y + ph)
    pat += 0.5 * rng.standard_normal(ny)[:, None]
    return (amp * pat).astype(np.float32)


def _art_rows(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=_ART_COLS)
    if not len(df):
        return df
    df["angle"] = df["angle"].astype(float)
    df["width_px"] = df["width_px"].fillna(0.0).astype(float)
    df["scope"] = df["scope"].fillna("point")
    return df


# ----------------------------------------------------------------------------- TNS


def make_tns_list(events: pd.DataFrame, config: SurveyConfig, seed: int) -> pd.DataFrame:
    """Simulated TNS search export: a magnitude-dependent fraction of the transients.

    ``events``: truth events (per-exposure rows, any nights). One row per reported object;
    P(report) = tns_fraction / (1 + exp((m_peak - tns_mag50) / tns_mag_width)).
    """
    cols = ["ID", "Name", "RA", "DEC", "Obj. Type", "Redshift", "Host Name", "Discovery Date (UT)",
            "Discovery Mag/Flux", "Discovering Group/s", "Reporting Group/s", "ra_deg", "dec_deg", "event_id"]
    need = {"event_id", "kind", "mag", "ra", "dec", "mjd"}
    missing = need - set(events.columns)
    if missing:
        raise ValueError(f"events: missing columns {sorted(missing)}")
    ev = events[events["kind"].isin(TNS_KINDS)]
    if not len(ev):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    agg = ev.groupby("event_id", sort=True).agg(
        kind=("kind", "first"), mag=("mag", "min"), ra=("ra", "first"), dec=("dec", "first"),
        mjd=("mjd", "min"), host=("host_id", "first"),
        t_start=("t_start_mjd", "first") if "t_start_mjd" in ev else ("mjd", "min"),
    ).reset_index()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7777]))
    p = config.tns_fraction / (1 + np.exp((agg["mag"].to_numpy() - config.tns_mag50) / config.tns_mag_width))
    u = rng.uniform(size=len(agg))
    frac = rng.uniform(size=len(agg))
    z = rng.uniform(0.01, 0.1, size=len(agg))
    classified = rng.uniform(size=len(agg)) < 0.2
    rep = agg[u < p].copy()
    if not len(rep):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    sel = (u < p)
    disc = rep["t_start"].to_numpy() + frac[sel] * (rep["mjd"].to_numpy() - rep["t_start"].to_numpy())
    rep["disc"] = disc
    rep = rep.sort_values(["disc", "event_id"]).reset_index(drop=True)
    zsel, csel = z[sel], classified[sel]
    tdisc = Time(rep["disc"].to_numpy(), format="mjd", scale="utc")
    years = [int(iso[:4]) for iso in tdisc.iso]
    kinds = rep["kind"].to_numpy()
    # TNS names count up within each discovery year
    counters: dict[int, int] = {}
    names = []
    for i, year in enumerate(years):
        k = counters.get(year, 0)
        counters[year] = k + 1
        names.append(f"{'SN' if csel[i] and kinds[i] == 'supernova' else 'AT'} {year}{_tns_suffix(k)}")
    ids = list(range(100000, 100000 + len(rep)))
    ra = Angle(rep["ra"].to_numpy(), unit="deg").to_string(unit="hour", sep=":", precision=3, pad=True)
    dec = Angle(rep["dec"].to_numpy(), unit="deg").to_string(unit="deg", sep=":", precision=2, alwayssign=True, pad=True)
    is_sn = (rep["kind"] == "supernova").to_numpy()
    return pd.DataFrame({
        "ID": ids, "Name": names, "RA": ra, "DEC": dec,
        "Obj. Type": np.where(csel & is_sn, "SN Ia", ""),
        "Redshift": np.where(csel & is_sn, np.round(zsel, 4).astype(str), ""),
        "Host Name": rep["host"].fillna("").to_numpy(),
        "Discovery Date (UT)": list(tdisc.iso),
        "Discovery Mag/Flux": np.round(rep["mag"].to_numpy() + 0.1, 2),
        "Discovering Group/s": "RBFLOW-SIM", "Reporting Group/s": "RBFLOW-SIM",
        "ra_deg": rep["ra"].to_numpy(), "dec_deg": rep["dec"].to_numpy(), "event_id": rep["event_id"].to_numpy(),
    })[cols]


def _tns_suffix(i: int) -> str:
    """TNS-style letter suffix: 0 -> 'aaa', 1 -> 'aab', ..."""
    s = ""
    for _ in range(3):
        s = chr(ord("a") + i % 26) + s
        i //= 26
    return s
