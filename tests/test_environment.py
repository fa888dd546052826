"""The environment record (tasks/environment.py): what a dataset's or a model's bits depend on
besides their inputs, recorded beside them (never keyed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.environment import code_version, cpu_model, numerics


def test_the_record_names_the_cpu_the_blas_kernels_and_the_code():
    rec = numerics()
    assert rec["cpu"] == cpu_model() and rec["cores"] == os.cpu_count()
    assert rec["blas"] and all(b["library"] and b["kernels"] for b in rec["blas"])
    assert json.loads(json.dumps(rec)) == rec  # goes into dataset.json and cell records as is
    code = code_version()
    assert code["package"] == "rbflow" and len(code["git_commit"]) in (0, 40)


def _avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _avx2(), reason="forcing OpenBLAS's Haswell kernels needs an AVX2 CPU")
def test_a_forced_openblas_kernel_set_is_what_the_record_says():
    # the build's bits depend on the kernels OpenBLAS picks (docs/reliability.md, section 4): a
    # forced kernel set must show in the record, or two datasets' hashes differ with no trace why
    code = "import json; from tasks.environment import numerics; print(json.dumps(numerics()))"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1], check=True).stdout
    rec = json.loads(out)
    if not any(b["library"] == "openblas" for b in rec["blas"]):
        pytest.skip("numpy is not linked to OpenBLAS here")
    assert rec["openblas_coretype"] == "Haswell"
    assert {b["kernels"] for b in rec["blas"] if b["library"] == "openblas"} == {"Haswell"}
