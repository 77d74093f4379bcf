"""Reading files a user or a plugin names (``reva_plugins/_fs.py``): never blocked by a FIFO,
never fooled by a device or a folder, never reading past a bound."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from reva_plugins._fs import NotRegular, open_regular, read_regular


def test_a_regular_file_is_read_within_its_bound(tmp_path: Path) -> None:
    file = tmp_path / "pid"
    file.write_bytes(b"1234\n")
    assert read_regular(file, 64) == b"1234\n"
    with open_regular(file) as f:
        assert f.read() == b"1234\n"


def test_a_file_over_the_bound_is_refused_not_read(tmp_path: Path) -> None:
    file = tmp_path / "big"
    file.write_bytes(b"x" * 100)
    with pytest.raises(OSError, match="larger than 64 bytes") as info:
        read_regular(file, 64)
    assert info.value.errno == errno.EFBIG


def test_a_fifo_is_refused_at_once_with_no_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_regular(fifo, 64)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], NotRegular)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_devices_and_folders_are_refused(path: str) -> None:
    with pytest.raises(NotRegular):
        read_regular(path, 64)


def test_a_symlink_is_refused_when_asked_not_to_follow(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_regular(link, 8) == b"x"
    with pytest.raises(OSError) as info:
        read_regular(link, 8, follow=False)
    assert info.value.errno == errno.ELOOP
