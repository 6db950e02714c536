"""Discovery stays in its plugin folder: black-box, through a worker pool and the CLI's worker mode.

Importing a ``main.py`` runs it, and the default plugin folder is the working directory. Each boefje
here writes a marker file when it is imported, so "not imported" is seen on disk, not inferred from
the registry: a worker started on a tree full of other code must run only its own boefjes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boefje_runtime.plugins import EAGER_IMPORT_LIMIT, BoefjeRegistry

from .helpers import IMAGE, error_text, run_cli, task, write_plugin


def _marked_boefje(folder: Path, boefje_id: str, markers: Path) -> None:
    """A boefje that leaves ``markers/<id>`` behind as soon as its main.py is imported."""
    code = f"""
        from pathlib import Path

        Path({str(markers)!r}, {boefje_id!r}).touch()

        def run(boefje_meta):
            return [({{"text/plain"}}, b"ran {boefje_id}")]
    """
    write_plugin(folder, code, id=boefje_id)  # no oci_image: a task for an unknown id must not fall back to it


def _imported(markers: Path) -> list[str]:
    return sorted(os.listdir(markers))


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_pool_imports_nothing_from_hidden_installed_deep_or_outside_folders(boefje_api, make_pool, tmp_path,
                                                                             markers):
    root = tmp_path / "workdir"
    _marked_boefje(root / "boefjes" / "kept", "kept", markers)
    strangers = {
        "hidden": root / ".cache" / "hidden",
        "venv": root / "venv" / "lib" / "python3.11" / "site-packages" / "venv",
        "site-packages": root / "lib" / "python3.11" / "site-packages" / "pkg",
        "dist-packages": root / "usr" / "lib" / "python3" / "dist-packages" / "pkg",
        "node-modules": root / "web" / "node_modules" / "pkg",
        "pycache": root / "boefjes" / "__pycache__" / "pkg",
        "too-deep": root.joinpath(*"abcdef", "too-deep"),  # 7 folders below the plugin folder
        "outside": tmp_path / "elsewhere" / "outside",  # reached only through a symlink
    }
    for boefje_id, folder in strangers.items():
        _marked_boefje(folder, boefje_id, markers)
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    make_pool(registry=BoefjeRegistry.discover(root), pool_size=1).start()
    kept = boefje_api.enqueue(task("kept"))
    asked = boefje_api.enqueue([task(boefje_id) for boefje_id in strangers])  # even a task cannot pull them in

    boefje_api.wait_for_status([kept, *asked], timeout=30)
    boefje_api.assert_completed(kept)
    for task_id, boefje_id in zip(asked, strangers, strict=True):
        assert boefje_api.status(task_id) == "failed", boefje_id
        assert f"no boefje with id {boefje_id!r}" in error_text(boefje_api, task_id)
    assert _imported(markers) == ["kept"]


def test_a_big_plugin_folder_is_imported_only_as_tasks_ask(boefje_api, make_pool, tmp_path, markers):
    root = tmp_path / "plugins"
    for i in range(EAGER_IMPORT_LIMIT + 1):
        _marked_boefje(root / f"b{i:02}", f"b{i:02}", markers)
    make_pool(registry=BoefjeRegistry.discover(root), pool_size=2).start()
    task_id = boefje_api.enqueue(task("b07"))

    boefje_api.wait_for_status(task_id, timeout=30)

    boefje_api.assert_completed(task_id)
    assert _imported(markers) == ["b07"]  # by the worker that ran it; neither worker imported the rest


def test_worker_mode_names_the_plugin_folder_and_what_it_found(boefje_api, tmp_path, markers):
    root = tmp_path / "plugins"
    _marked_boefje(root / "kat_one", "one", markers)
    _marked_boefje(root / "node_modules" / "npm", "npm", markers)
    env = {"BOEFJES_API": boefje_api.url, "OCI_IMAGE": IMAGE, "BURST": "true", "POOL_SIZE": "1"}

    result = run_cli("--plugin-dir", str(root), env=env, timeout=60)

    assert result.returncode == 0, result.stderr
    assert f"Found 1 boefje under {root} (0 broken); each worker imports them at start" in result.stderr
    assert _imported(markers) == ["one"]
