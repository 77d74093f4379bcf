"""Bundles, sources and lock files under hostile input: what a tar may make the core write, what
a refusal may print, and which exit code says "could not reach a source" (real CLI runs)."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from reva_plugins import ConfigError
from reva_plugins._lockfile import loads

from .conftest import ROOT, SAMPLES, cli

_FSIZE_LIMIT = 2 << 20
_CLI = (sys.executable, "-m", "reva_plugins")


def _block(info: tarfile.TarInfo, payload: bytes = b"") -> bytes:
    """One member, written by hand: ``tarfile`` itself refuses to write some of these."""
    padding = b"\0" * (-len(payload) % tarfile.BLOCKSIZE)
    return info.tobuf(tarfile.GNU_FORMAT) + payload + padding


def _file(name: str, data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return _block(info, data)


def _folder(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return _block(info)


def _manifest(files: dict[str, str] | None = None) -> bytes:
    return json.dumps({"format": 1, "files": files or {}}).encode()


def _tar(path: Path, *members: bytes) -> Path:
    path.write_bytes(b"".join(members) + b"\0" * (2 * tarfile.BLOCKSIZE))
    return path


def _gnu_sparse(name: str, real_size: int, data: bytes = b"x" * 512) -> bytes:
    """An old-GNU sparse member: ``data`` at the end of ``real_size`` bytes of holes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))

    def octal(n: int) -> bytes:
        return b"%011o\0" % n

    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398], header[398:410] = octal(real_size - len(data)), octal(len(data))
    header[483:495] = octal(real_size)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return bytes(header) + data


def _pax_sparse(name: str, real_size: int, data: bytes = b"y" * 512) -> bytes:
    """A PAX (GNU 0.1) sparse member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = {
        "GNU.sparse.size": str(real_size),
        "GNU.sparse.map": f"{real_size - len(data)},{len(data)}",
    }
    return info.tobuf(tarfile.PAX_FORMAT) + data


def _import_limited(bundle: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``env import`` with files capped at 2 MB (``RLIMIT_FSIZE``): a write past that fails, so
    a refusal that comes only after writing is seen as a failure, not a refusal."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE_LIMIT, _FSIZE_LIMIT))

    return subprocess.run(
        [*_CLI, "env", "import", str(bundle), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        preexec_fn=limit,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], why: str, cache: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert why in result.stderr
    assert "refusing it" in result.stderr
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(cache.glob("bundles/*"))
    assert not list(cache.glob("tmp/*"))


@pytest.mark.parametrize("member", [_gnu_sparse, _pax_sparse])
def test_a_sparse_member_is_refused_before_anything_is_written(
    member: Callable[[str, int], bytes], tmp_path: Path
) -> None:
    real = 64 << 20  # 32 times the file size limit, from a few KB of tar
    name = "wheels/holes-1.0-py3-none-any.whl"
    manifest = _file("manifest.json", _manifest({name: "0" * 64}))
    bundle = _tar(tmp_path / "sparse.tar", manifest, member(name, real))
    assert bundle.stat().st_size < 8 << 10
    with tarfile.open(bundle) as opened:  # what tarfile alone would write
        assert opened.getmember(name).size == real
    cache = tmp_path / "cache"
    _assert_refused(_import_limited(bundle, cache), "is a sparse file", cache)


def test_members_the_manifest_does_not_list_are_refused_before_any_is_written(
    tmp_path: Path,
) -> None:
    big = b"\0" * (2 * _FSIZE_LIMIT)
    bundle = _tar(
        tmp_path / "b.tar",
        _file("wheels/big-1.0-py3-none-any.whl", big),
        _file("manifest.json", _manifest()),
    )
    cache = tmp_path / "cache"
    result = _import_limited(bundle, cache)
    _assert_refused(result, "wheels/big-1.0-py3-none-any.whl is not in the manifest", cache)


def test_a_manifest_entry_missing_from_the_tar_is_refused_before_writing(tmp_path: Path) -> None:
    bundle = _tar(tmp_path / "b.tar", _file("manifest.json", _manifest({"lock.toml": "0" * 64})))
    cache = tmp_path / "cache"
    result = cli("env", "import", str(bundle), "--cache-dir", str(cache))
    _assert_refused(result, "lock.toml is in the manifest but not in the bundle", cache)


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (b"{not json", "manifest.json is not valid JSON"),
        (b'{"format": 2, "files": {}}', "manifest.json is not a bundle manifest of format 1"),
        (b'{"format": 1}', "manifest.json lists no files"),
        (b'{"format": 1, "files": {"../x": "' + b"0" * 64 + b'"}}', "a bad entry '../x'"),
        (b'{"format": 1, "files": {"/etc/x": "' + b"0" * 64 + b'"}}', "a bad entry '/etc/x'"),
        (b'{"format": 1, "files": {"lock.toml": "abc"}}', "a bad entry 'lock.toml'"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_refused(
    manifest: bytes, why: str, tmp_path: Path
) -> None:
    bundle = _tar(tmp_path / "b.tar", _file("manifest.json", manifest))
    cache = tmp_path / "cache"
    _assert_refused(cli("env", "import", str(bundle), "--cache-dir", str(cache)), why, cache)


def test_a_member_whose_data_runs_past_the_end_of_the_tar_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("wheels/cut-1.0-py3-none-any.whl")
    info.size = 1 << 20
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(_file("manifest.json", _manifest()) + info.tobuf(tarfile.GNU_FORMAT))
    cache = tmp_path / "cache"
    result = cli("env", "import", str(bundle), "--cache-dir", str(cache))
    assert result.returncode == 2, result.stderr
    assert "refusing it" in result.stderr
    assert "internal error" not in result.stderr
    assert not list(cache.glob("tmp/*"))


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([_file("x"), _file("x/y")], "member 'x/y' is inside 'x', a file"),
        ([_file("x/y"), _file("x")], "member 'x' is a file where other members need a folder"),
        ([_folder("x"), _file("x")], "member 'x' appears twice"),
        ([_file("x"), _folder("x/")], "member 'x' appears twice"),
        ([_file("x"), _file("./x")], "member './x' appears twice"),
        ([_file("a/b"), _file("a/b/c/d")], "member 'a/b/c/d' is inside 'a/b', a file"),
    ],
)
def test_a_file_where_a_folder_must_be_is_a_refusal_not_a_bug(
    members: list[bytes], why: str, tmp_path: Path
) -> None:
    bundle = _tar(tmp_path / "b.tar", _file("manifest.json", _manifest()), *members)
    cache = tmp_path / "cache"
    result = cli("env", "import", str(bundle), "--cache-dir", str(cache))
    _assert_refused(result, why, cache)


_FORGED = "\n\x1b[31mreva-plugins: error: forged\x1b[0m\r"


@pytest.mark.parametrize(
    ("members", "shown"),
    [
        (
            [_file("manifest.json", _manifest()), _file(f"wheels/a{_FORGED}.whl")],
            "wheels/a\\n\\x1b[31mreva-plugins: error: forged\\x1b[0m\\r.whl is not in the manifest",
        ),
        (
            [_file("manifest.json", _manifest({f"x{_FORGED}": "0" * 64}))],
            "x\\n\\x1b[31mreva-plugins: error: forged\\x1b[0m\\r is in the manifest but not in",
        ),
        (
            [_file("manifest.json", _manifest({"a\u202eb": "0" * 64}))],
            "a\\u202eb is in the manifest",
        ),
    ],
)
def test_refusals_show_names_escaped_on_one_line(
    members: list[bytes], shown: str, tmp_path: Path
) -> None:
    bundle = _tar(tmp_path / "b.tar", *members)
    cache = tmp_path / "cache"
    result = cli("env", "import", str(bundle), "--cache-dir", str(cache))
    _assert_refused(result, shown, cache)
    assert "\x1b" not in result.stderr
    assert "\u202e" not in result.stderr
    assert "\r" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


_EMPTY_LOCK = b"version = 1\n"


def _empty_bundle(folder: Path) -> Path:
    folder.mkdir()
    (folder / "wheels").mkdir()
    (folder / "lock.toml").write_bytes(_EMPTY_LOCK)
    digest = hashlib.sha256(_EMPTY_LOCK).hexdigest()
    (folder / "manifest.json").write_bytes(_manifest({"lock.toml": digest}))
    return folder


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_a_bundle_tarred_as_dot_is_accepted(tmp_path: Path) -> None:
    """``tar cf b.tar -C folder .`` names its members ``.``, ``./manifest.json`` …"""
    folder = _empty_bundle(tmp_path / "bundle")
    tar = tmp_path / "b.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(folder), "."], check=True)
    with tarfile.open(tar) as opened:
        assert {"./manifest.json", "./lock.toml"} <= set(opened.getnames())
    cache = tmp_path / "cache"
    result = cli("env", "import", str(tar), "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    (extracted,) = cache.glob("bundles/*")
    assert sorted(p.name for p in extracted.iterdir()) == ["lock.toml", "manifest.json", "wheels"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("./../escaped", "a name with '..'"),
        ("/tmp/escaped-abs", "an absolute"),
        (".", "the bundle's own folder ('.') but not a folder"),
    ],
)
def test_dot_names_do_not_open_a_way_out(name: str, why: str, tmp_path: Path) -> None:
    bundle = _tar(tmp_path / "b.tar", _file("manifest.json", _manifest()), _file(name, b"evil"))
    cache = tmp_path / "cache"
    result = cli("env", "import", str(bundle), "--cache-dir", str(cache))
    _assert_refused(result, why, cache)
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(("value", "shown"), [("true", "True"), ("1.0", "1.0"), ('"1"', "'1'")])
def test_the_lock_format_is_the_integer_1_only(value: str, shown: str) -> None:
    with pytest.raises(ConfigError, match=f"lock format {shown} is not 1"):
        loads(f"version = {value}\n".encode())
    assert loads(b"version = 1\n").services == {}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # a download is retried before it fails
@pytest.mark.parametrize(
    "driver",
    ["git+https://127.0.0.1:{port}/r.git@main", "https://127.0.0.1:{port}/p-1.0-py3-none-any.whl"],
)
@pytest.mark.parametrize("command", ["check", "lock"])
def test_a_source_that_cannot_be_reached_is_a_remote_failure(
    driver: str, command: str, tmp_path: Path
) -> None:
    config = tmp_path / "revad.toml"
    config.write_text(
        "[plugins]\nallowed_sources = ['*']\n[grpc.services.userprovider]\n"
        f'driver = "{driver.format(port=_closed_port())}"\n'
    )
    result = cli(command, str(config), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 1, result.stderr
    assert "cannot reach" in result.stderr or "cannot download" in result.stderr
    assert "Connection refused" in result.stderr or "connect" in result.stderr


def test_a_near_miss_in_plugins_says_what_was_meant(tmp_path: Path) -> None:
    config = tmp_path / "revad.toml"
    config.write_text("[plugins]\ncall_timout = 5\n")
    result = cli("check", str(config), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2, result.stderr
    assert "plugins.call_timout: unknown key; did you mean 'call_timeout'?" in result.stderr
    assert "(expected one of: cache_dir," in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_key_far_from_any_gets_no_guess(tmp_path: Path) -> None:
    config = tmp_path / "revad.toml"
    config.write_text("[plugins]\ncolour = 5\n")
    result = cli("check", str(config), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "plugins.colour: unknown key (expected one of:" in result.stderr


def test_the_plugins_bundle_key_takes_the_same_checks(tmp_path: Path) -> None:
    """``[plugins] bundle`` (``check``, ``serve``) opens a bundle as ``env import`` does."""
    name = "wheels/holes-1.0-py3-none-any.whl"
    _tar(
        tmp_path / "sparse.tar",
        _file("manifest.json", _manifest({name: "0" * 64})),
        _gnu_sparse(name, 64 << 20),
    )
    config = tmp_path / "revad.toml"
    config.write_text(
        '[plugins]\nbundle = "sparse.tar"\n[grpc.services.userprovider]\n'
        f'driver = "{SAMPLES / "json_users"}"\n'
    )
    cache = tmp_path / "cache"
    result = cli("check", str(config), "--cache-dir", str(cache))
    assert result.returncode == 2, result.stderr
    assert "is a sparse file; refusing it" in result.stderr
    assert not list(cache.glob("tmp/*"))
