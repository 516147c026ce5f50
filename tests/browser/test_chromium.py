"""The browser tests' gate: a missing browser skips them on a developer's machine and fails them in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.chromium import require_browser


def test_missing_browser_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        require_browser(tmp_path / "no-chromium")


def test_missing_browser_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        require_browser(tmp_path / "no-chromium")
