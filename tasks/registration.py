"""Candidate registration as the survey runs it, with and without the classifier.

A candidate detected (score >= threshold) for the first time is registered as a
**variable**; detected again at the same coordinates (within ``radius_arcsec``) on a later
visit (another exposure), it becomes a **transient**. Without the classifier every
detection is a candidate.

"Same coordinates" is a friends-of-friends grouping of candidate positions with linking
length ``radius_arcsec`` (astropy ``search_around_sky`` + scipy connected components);
on the sparse candidate lists a survey produces this equals matching each new detection to
the object's first position, and it needs no Python loop over visits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord
import astropy.units as u
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class RegistrationCounts:
    """Counts of one registration run.

    n_candidates: detections passing the threshold; n_variables: registered objects
    (first detections); n_transients: objects seen on >= 2 visits; n_tns_transients:
    transients with a TNS name; tns_share_transients: n_tns_transients / n_transients
    (None when there are none).
    """

    n_candidates: int
    n_variables: int
    n_transients: int
    n_tns_transients: int
    tns_share_transients: float | None


@dataclass(frozen=True)
class RegistrationResult:
    """Registration with the classifier (``with_classifier``) and without it.

    objects: one row per registered object of the run with the classifier:
    ``object_id, ra, dec, first_mjd, first_exposure, n_visits, n_detections, status``
    ("variable" / "transient"), ``transient_mjd`` (the second visit, NaN for variables),
    ``tns_name``. ``reduction``: without / with ratios of variables and transients and the
    gain in TNS share (None where undefined).
    """

    threshold: float | None
    radius_arcsec: float
    with_classifier: RegistrationCounts
    without_classifier: RegistrationCounts
    objects: pd.DataFrame
    reduction: dict

    def to_dict(self) -> dict:
        def counts(c: RegistrationCounts) -> dict:
            return dict(c.__dict__)

        return {
            "threshold": self.threshold, "radius_arcsec": self.radius_arcsec,
            "with_classifier": counts(self.with_classifier),
            "without_classifier": counts(self.without_classifier),
            "reduction": dict(self.reduction),
        }


def _visit_keys(df: pd.DataFrame) -> np.ndarray:
    """One label per visit (exposure; mjd when there is no exposure column)."""
    if "exposure" in df:
        return df["exposure"].astype(str).to_numpy(object)
    return df["mjd"].round(8).astype(str).to_numpy(object)


def _register_once(df: pd.DataFrame, radius_arcsec: float) -> tuple[RegistrationCounts, pd.DataFrame]:
    """Register the candidates in ``df`` (already thresholded)."""
    n = len(df)
    cols = ["object_id", "ra", "dec", "first_mjd", "first_exposure", "n_visits",
            "n_detections", "status", "transient_mjd", "tns_name"]
    if n == 0:
        return RegistrationCounts(0, 0, 0, 0, None), pd.DataFrame(columns=cols)
    order = np.lexsort((_visit_keys(df), df["mjd"].to_numpy(float)))  # time order
    df = df.iloc[order].reset_index(drop=True)
    c = SkyCoord(df["ra"].to_numpy(float) * u.deg, df["dec"].to_numpy(float) * u.deg)
    i, j, _, _ = c.search_around_sky(c, radius_arcsec * u.arcsec)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    visits = _visit_keys(df)
    tns = (df["tns_name"] if "tns_name" in df else pd.Series([None] * n)).to_numpy(object)
    frame = pd.DataFrame({"obj": label, "visit": visits, "mjd": df["mjd"].to_numpy(float),
                          "ra": df["ra"].to_numpy(float), "dec": df["dec"].to_numpy(float),
                          "tns": tns})
    g = frame.groupby("obj", sort=False)  # rows are in time order within each object
    first = g.first()  # first non-null per column: tns is the first TNS name seen
    head = g.head(1).set_index("obj")
    visits_first = frame.drop_duplicates(["obj", "visit"])
    n_vis = visits_first.groupby("obj").size()
    second = visits_first.groupby("obj").nth(1).set_index("obj")["mjd"]
    objects_raw = pd.DataFrame({
        "object_id": head.index.to_numpy(), "ra": head["ra"].to_numpy(),
        "dec": head["dec"].to_numpy(), "first_mjd": head["mjd"].to_numpy(),
        "first_exposure": head["visit"].to_numpy(),
        "n_visits": n_vis.reindex(head.index).to_numpy(),
        "n_detections": g.size().reindex(head.index).to_numpy(),
        "transient_mjd": second.reindex(head.index).to_numpy(float),
        "tns_name": first["tns"].reindex(head.index).to_numpy(object),
    })
    objects_raw["status"] = np.where(objects_raw["n_visits"] >= 2, "transient", "variable")
    objects_raw["tns_name"] = objects_raw["tns_name"].where(objects_raw["tns_name"].notna(), None)
    rows = objects_raw
    objects = pd.DataFrame(rows, columns=cols).sort_values("first_mjd", kind="stable")
    objects = objects.reset_index(drop=True)
    objects["object_id"] = np.arange(len(objects))
    tr = objects["status"] == "transient"
    n_tr = int(tr.sum())
    n_tns = int(objects.loc[tr, "tns_name"].notna().sum())
    counts = RegistrationCounts(
        n_candidates=n, n_variables=len(objects), n_transients=n_tr, n_tns_transients=n_tns,
        tns_share_transients=n_tns / n_tr if n_tr else None,
    )
    return counts, objects


def register(
    detections: pd.DataFrame, scores: np.ndarray, threshold: float | None, *,
    radius_arcsec: float = 1.5,
) -> RegistrationResult:
    """Register candidates with the classifier (score >= threshold) and without it.

    detections (N rows): ``ra``, ``dec`` (deg), ``mjd``, preferably ``exposure`` (the visit)
    and ``tns_name`` (from ``crossmatch_tns``; enables the TNS share). scores: (N,) P(real).
    threshold None: every detection is a candidate (both runs are then the same).
    """
    if radius_arcsec <= 0:
        raise ValueError(f"radius_arcsec must be > 0, got {radius_arcsec}")
    missing = [c for c in ("ra", "dec", "mjd") if c not in detections]
    if missing:
        raise ValueError(f"detections lack columns {missing}")
    s = np.asarray(scores, dtype=float)
    if s.shape != (len(detections),):
        raise ValueError(f"scores shape {s.shape} != ({len(detections)},) detections")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1] or None, got {threshold}")
    det = detections.reset_index(drop=True)
    without, _ = _register_once(det, radius_arcsec)
    if threshold is None:
        with_c, objects = without, _register_once(det, radius_arcsec)[1]
    else:
        with_c, objects = _register_once(det[s >= threshold], radius_arcsec)

    def ratio(a: float | None, b: float | None) -> float | None:
        return float(a) / float(b) if a is not None and b else None

    reduction = {
        "variables_without_over_with": ratio(without.n_variables, with_c.n_variables),
        "transients_without_over_with": ratio(without.n_transients, with_c.n_transients),
        "tns_share_gain": ratio(with_c.tns_share_transients, without.tns_share_transients),
    }
    return RegistrationResult(threshold=None if threshold is None else float(threshold),
                              radius_arcsec=float(radius_arcsec), with_classifier=with_c,
                              without_classifier=without, objects=objects, reduction=reduction)
