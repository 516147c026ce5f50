"""CI cannot pass by skipping: .ci/test sets CI=1, says loudly when pytest collected nothing (exit 5, which the
CI contract counts as success), and under CI a missing data root or browser fails the run instead of skipping
the tests that need them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ci_test(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """.ci/test in ``folder``, with this interpreter as its `python`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # -n 0 after the script's -n auto: one process, since these folders hold a test or none and workers would
    # only add their start-up (the suite's own run under -n auto is CI itself).
    return subprocess.run([str(ROOT / ".ci" / "test"), "-p", "no:cacheprovider", "-n", "0"], cwd=folder, text=True,
                          capture_output=True, env={**env, "PATH": path}, timeout=120)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}


def test_a_run_that_collects_nothing_is_said_loudly(tmp_path: Path) -> None:
    result = ci_test(tmp_path, clean_env())
    assert result.returncode == 0, result.stdout + result.stderr  # the CI contract: pytest's exit 5 is success
    assert result.stderr.strip().splitlines()[-1] == ("CI: pytest collected no tests (exit 5); counted as success "
                                                      "by the CI contract, but nothing was tested")


def test_the_ci_script_sets_ci_itself(tmp_path: Path) -> None:
    (tmp_path / "test_env.py").write_text("import os\n\ndef test_ci():\n    assert os.environ['CI'] == '1'\n")
    result = ci_test(tmp_path, clean_env())
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


def pytest_without_data_or_browser(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest on this suite with the data root and the browser pointed at nothing."""
    env = {**clean_env(), "VGGEXPORT_TEST_DATA": str(tmp_path / "no-data"),
           "VGGEXPORT_TEST_CHROMIUM": str(tmp_path / "no-chromium"), **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=ROOT, text=True, capture_output=True, env=env, timeout=300)


def test_under_ci_missing_data_and_browser_fail_the_run(tmp_path: Path) -> None:
    result = pytest_without_data_or_browser(tmp_path, "--collect-only", "tests/data/test_data.py",
                                            "tests/serve/test_page.py", CI="1")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    (line,) = [line for line in output.splitlines() if "CI cannot skip" in line]
    assert f"real Fashion-MNIST not found at {tmp_path / 'no-data'}" in line, line
    assert f"no Chromium at {tmp_path / 'no-chromium'}" in line, line


def test_outside_ci_a_missing_data_root_skips(tmp_path: Path) -> None:
    result = pytest_without_data_or_browser(tmp_path, "tests/data/test_data.py::test_real_fashion_mnist")
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout + result.stderr
    assert f"real Fashion-MNIST not found at {tmp_path / 'no-data'}" in result.stdout
