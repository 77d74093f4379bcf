"""Build progress reaches its observer through the typed ``BuildProgress`` callback."""

from __future__ import annotations

from pathlib import Path

import pytest

from reva_plugins import BuildProgress, EnvBuildError, Host

from .factory import make_plugin

pytestmark = pytest.mark.slow


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool | None]] = []

    def started(self, label: str) -> None:
        self.events.append(("started", label, None))

    def finished(self, label: str, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.events.append(("finished", label, ok))


def _config(driver: Path) -> dict[str, object]:
    return {"grpc": {"services": {"userprovider": {"driver": str(driver)}}}}


def test_a_build_is_reported_once_and_a_cached_env_not_at_all(
    tmp_path: Path, fresh_cache: Path
) -> None:
    plugin = make_plugin(tmp_path / "plugin")
    recorder: BuildProgress = Recorder()
    with Host(_config(plugin), base_dir=tmp_path, progress=recorder) as host:
        host.service("userprovider")
    label = f"userprovider ({plugin})"
    assert isinstance(recorder, Recorder)
    assert recorder.events == [("started", label, None), ("finished", label, True)]
    again = Recorder()
    with Host(_config(plugin), base_dir=tmp_path, progress=again) as host:
        host.service("userprovider")
    assert again.events == []


def test_a_failed_build_is_reported_as_failed(tmp_path: Path, fresh_cache: Path) -> None:
    plugin = make_plugin(tmp_path / "plugin", dependencies=("reva-no-such-dist-xyz==9",))
    recorder = Recorder()
    config = {**_config(plugin), "plugins": {"offline": True}}
    with (
        Host(config, base_dir=tmp_path, progress=recorder) as host,
        pytest.raises(EnvBuildError),
    ):
        host.service("userprovider")
    assert [(kind, ok) for kind, _label, ok in recorder.events] == [
        ("started", None),
        ("finished", False),
    ]
