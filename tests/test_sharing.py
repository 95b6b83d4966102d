"""The class cache: listing, exporting and importing cache entries (ubtlib.pipeline.sharing)."""

import io
import json
import subprocess
import sys
import tarfile

import pytest
import torch
from safetensors.torch import save_file

from ubtlib.pipeline import cache, sharing

MODULE = "ubtlib.pipeline.worlds"  # any stage module: the entries' code is this checkout's


def make_entry(root, monkeypatch, value: float):
    monkeypatch.setenv("UBT_CACHE_DIR", str(root))
    calls = []

    def compute(folder):
        calls.append(value)
        save_file({"x": torch.full((3,), value)}, str(folder / "t.safetensors"))
        (folder / "meta.json").write_text(json.dumps({"value": value}))

    def load(folder):
        return json.loads((folder / "meta.json").read_text())["value"]

    return cache.cached("toy", compute, load, code_module=MODULE, value=value), calls


def test_export_then_import_installs_what_the_other_checkout_reads(tmp_path, monkeypatch):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    make_entry(teacher, monkeypatch, 1.0)
    make_entry(teacher, monkeypatch, 2.0)
    listed = sharing.entries(teacher)
    assert [e["stage"] for e in listed] == ["toy", "toy"] and all(e["problem"] is None for e in listed)
    assert {sharing.parameters(e["desc"])["value"] for e in listed} == {1.0, 2.0}
    r = sharing.export(tmp_path / "class.tar.gz", teacher)
    assert r["exported"] == 2 and r["left_out"] == 0
    got = sharing.import_entries(tmp_path / "class.tar.gz", student)
    assert len(got["installed"]) == 2 and not got["refused"]
    value, calls = make_entry(student, monkeypatch, 2.0)  # read from the imported entry
    assert value == 2.0 and calls == []
    again = sharing.import_entries(tmp_path / "class.tar.gz", student)
    assert len(again["present"]) == 2 and not again["installed"]


def _alter(root, field, value):
    """Give the one toy entry another key (and the folder name that key hashes to)."""
    (folder,) = (root / "toy").iterdir()
    desc = json.loads((folder / "key.json").read_text())
    desc[field] = value
    (folder / "key.json").write_text(json.dumps(desc))
    folder.rename(folder.parent / cache.entry_digest(desc))
    return cache.entry_digest(desc)


def test_entries_of_other_code_or_versions_are_left_out_and_refused(tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    make_entry(teacher, monkeypatch, 1.0)
    digest = _alter(teacher, "code", "0" * 16)
    (e,) = sharing.entries(teacher)
    assert "differs from this checkout's" in e["problem"]
    assert sharing.export(tmp_path / "c.tar.gz", teacher) == {
        "exported": 0,
        "left_out": 1,
        "bytes": pytest.approx((tmp_path / "c.tar.gz").stat().st_size),
    }
    # a tarball that carries it anyway (an older checkout's export) is refused, by name
    tar_path = tmp_path / "old.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        manifest = json.dumps(
            {"format": 1, "entries": [{"stage": "toy", "digest": digest, "size": 1}]}
        ).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for f in (teacher / "toy" / digest).iterdir():
            tar.add(f, arcname=f"toy/{digest}/{f.name}")
    got = sharing.import_entries(tar_path, tmp_path / "student")
    assert not got["installed"] and "differs from this checkout's" in got["refused"][f"toy/{digest}"]
    make_entry(tmp_path / "v", monkeypatch, 1.0)
    _alter(tmp_path / "v", "libraries", {**cache.library_versions(), "torch": "1.0"})
    (e,) = sharing.entries(tmp_path / "v")
    assert e["problem"].startswith("it was computed with torch 1.0 (here ")
    (folder,) = (tmp_path / "v" / "toy").iterdir()
    folder.rename(folder.parent / ("f" * 20))  # a folder that its key does not hash to
    assert "does not hash to its folder name" in sharing.entries(tmp_path / "v")[0]["problem"]


def _tarball(path, members: dict, manifest=True):
    with tarfile.open(path, "w:gz") as tar:
        if manifest:
            members = {"manifest.json": json.dumps({"format": 1, "entries": []}).encode(), **members}
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "members, message",
    [
        ({"toy/abc/model.pkl": b"x"}, "neither JSON nor safetensors"),
        ({"../evil.json": b"{}"}, "is not a cache entry's file"),
        ({"toy/abc/sub/x.json": b"{}"}, "is not a cache entry's file"),
    ],
)
def test_a_tarball_with_other_files_is_refused_before_anything_is_installed(tmp_path, members, message):
    with pytest.raises(ValueError, match=message):
        sharing.import_entries(_tarball(tmp_path / "bad.tar.gz", members), tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_a_file_that_is_no_class_cache_is_named(tmp_path):
    with pytest.raises(ValueError, match="no readable manifest.json"):
        sharing.import_entries(_tarball(tmp_path / "m.tar.gz", {}, manifest=False), tmp_path)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a complete class-cache tarball"):
        sharing.import_entries(tmp_path / "junk.tar.gz", tmp_path)
    with pytest.raises(FileNotFoundError, match="no such class-cache file"):
        sharing.import_entries(tmp_path / "absent.tar.gz", tmp_path)


def test_cache_commands(tmp_path, monkeypatch):
    make_entry(tmp_path / "c", monkeypatch, 3.0)
    env = {"UBT_CACHE_DIR": str(tmp_path / "c")}
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "ubtlib", "cache", *a],
        capture_output=True,  # noqa: E731
        text=True,
        env={**__import__("os").environ, **env},
    )
    ls = run("ls")
    assert (
        ls.returncode == 0 and "toy" in ls.stdout and "read here" in ls.stdout and '"value": 3.0' in ls.stdout
    )
    out = run("export", str(tmp_path / "x.tar.gz"))
    assert out.returncode == 0 and "wrote 1 entries" in out.stdout
    env["UBT_CACHE_DIR"] = str(tmp_path / "other")
    assert "installed 1 entries" in run("import", str(tmp_path / "x.tar.gz")).stdout
    bad = run("import", str(tmp_path / "nothing.tar.gz"))
    assert bad.returncode != 0 and "no such class-cache file" in bad.stderr


def test_a_truncated_tarball_is_refused_and_the_cache_kept(tmp_path, monkeypatch):
    make_entry(tmp_path / "teacher", monkeypatch, 1.0)
    make_entry(tmp_path / "teacher", monkeypatch, 2.0)
    sharing.export(tmp_path / "c.tar.gz", tmp_path / "teacher")
    data = (tmp_path / "c.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    student = tmp_path / "student"
    make_entry(student, monkeypatch, 5.0)  # the student's own entry
    with pytest.raises(ValueError, match="not a complete class-cache tarball"):
        sharing.import_entries(tmp_path / "cut.tar.gz", student)
    assert make_entry(student, monkeypatch, 5.0) == (5.0, [])  # still there, read from the cache
    assert all(e["problem"] is None for e in sharing.entries(student))  # nothing half-written
