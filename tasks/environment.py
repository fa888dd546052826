"""What a number computed here depends on besides its inputs: code version, CPU and the
numeric kernels the libraries picked for it. Pure reads, no Prefect.

Recorded (never keyed) in ``dataset.json`` (``environment``) and in every experiment cell
and stage-1 record. Why it matters: the build's subtraction fits (``np.linalg.lstsq``,
``eigh``, matrix products) run on OpenBLAS, which picks its kernels by CPU model at load
time, and different kernels sum in different orders. Found 2026-12-06: a Zen 5 EPYC gets
OpenBLAS's *Haswell* kernels where the earlier machines got *SkylakeX*; the same (config,
seed, night) then hashed 86622c83 instead of 1422a2e4 (held-out ``ci`` night; S/N differing
by up to 5e-4 relative, every label the same). ``OPENBLAS_CORETYPE=SkylakeX`` (set before
numpy loads) gave the earlier hash bit for bit. docs/reliability.md, section 4.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def code_version() -> dict:
    """The package version and the git commit of the checkout the code runs from."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("rbflow")
    except PackageNotFoundError:
        v = "unknown"
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": "rbflow", "version": v, "git_commit": commit}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), with its family/model numbers where Linux gives them
    ("AMD EPYC" alone does not tell a Zen 4 from a Zen 5)."""
    name, fam, mod = platform.processor() or platform.machine(), None, None
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = ln.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name":
                name = v
            elif k == "cpu family" and fam is None:
                fam = v
            elif k == "model" and mod is None:
                mod = v
            elif not ln.strip() and fam is not None:  # the first processor is enough
                break
    except OSError:
        pass
    return name if fam is None else f"{name} (family {fam}, model {mod})"


def numerics() -> dict:
    """The CPU, numpy's SIMD targets and each loaded BLAS with the kernel set it chose."""
    import numpy as np
    from threadpoolctl import threadpool_info
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        simd = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    except ImportError:  # numpy's private module moved: the record goes without it
        simd = None
    blas = [{"library": i.get("internal_api"), "version": i.get("version"), "kernels": i.get("architecture")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numpy_simd": simd, "blas": blas,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


__all__ = ["code_version", "cpu_model", "numerics"]
