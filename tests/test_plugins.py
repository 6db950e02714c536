"""Finding boefjes in plugin trees laid out as OpenKAT lays them out, and registering callables.

The trees live in tests/plugin_trees and are copied to a temporary folder per test, so imports
write no bytecode into the repository and every test imports its own fresh copy.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import pytest

from boefje_runtime.errors import BoefjeNotFound, BoefjeRuntimeError, PluginError
from boefje_runtime.plugins import (
    EAGER_IMPORT_LIMIT,
    MAX_DEPTH,
    Boefje,
    BoefjeRegistry,
    ImportMode,
    PluginProblem,
)

from .helpers import write_plugin

META = {"id": "t-1", "boefje": {"id": "alpha"}, "input_ooi": "Hostname|internet|example.com", "organization": "o"}


# --- OpenKAT's layout ------------------------------------------------------------------------------------------


def test_discovers_openkat_layout_and_imports_siblings_through_the_package_path(tree):
    registry = BoefjeRegistry.discover(tree("openkat"))

    assert sorted(registry.boefjes) == ["alpha", "beta", "counter", "env-reader"]  # the normalizer is not a boefje
    alpha = registry.find("alpha")
    assert (alpha.id, alpha.name, alpha.version, alpha.oci_image) == ("alpha", "Alpha", "1.0",
                                                                      "ghcr.io/example/alpha:latest")
    assert alpha.path == registry.root / "boefjes" / "plugins" / "kat_alpha"

    assert alpha.load()(META) == [({"text/plain"}, "hello Hostname|internet|example.com")]
    assert "boefjes.plugins.kat_alpha.main" in sys.modules  # the dotted path OpenKAT's images import
    assert registry.errors == []


def test_discovery_reads_boefje_json_only(tree):
    root = tree("openkat")

    registry = BoefjeRegistry.discover(root)

    assert "boefjes.plugins.kat_counter.main" not in sys.modules
    assert not (root / "boefjes/plugins/kat_counter/imports.log").exists()
    assert registry.find("counter").oci_image == "ghcr.io/example/shared:latest"


def test_a_boefje_is_imported_once_per_process(tree):
    root = tree("openkat")
    registry = BoefjeRegistry.discover(root)

    first = registry.find("counter").load()
    again = registry.find("counter").load()
    from_a_second_registry = BoefjeRegistry.discover(root).find("counter").load()

    assert first is again is from_a_second_registry
    assert [first(META), first(META)] == [[({"text/plain"}, "1")], [({"text/plain"}, "2")]]
    assert (root / "boefjes/plugins/kat_counter/imports.log").read_text() == "imported\n"


def test_load_all_imports_every_boefje_up_front(tree):
    root = tree("openkat")
    registry = BoefjeRegistry.discover(root)

    assert registry.load_all() == []

    assert (root / "boefjes/plugins/kat_counter/imports.log").read_text() == "imported\n"
    assert {"boefjes.plugins.kat_alpha.main", "boefjes.plugins.kat_env.main"} <= set(sys.modules)


def _counted_boefjes(root: Path, count: int) -> None:
    """``count`` boefjes whose import appends their id to root/imports.log."""
    for i in range(count):
        code = f"""
            with open({str(root / "imports.log")!r}, "a") as log:
                log.write("b{i}\\n")

            def run(boefje_meta):
                return []
        """
        write_plugin(root / f"b{i}", code, id=f"b{i}")


def _imported(root: Path) -> list[str]:
    log = root / "imports.log"
    return sorted(log.read_text().split()) if log.exists() else []


def test_up_to_the_eager_limit_every_boefje_is_imported_at_start(tmp_path):
    _counted_boefjes(tmp_path, EAGER_IMPORT_LIMIT)
    registry = BoefjeRegistry.discover(tmp_path)

    assert registry.import_mode is ImportMode.AT_START
    assert registry.load_all() == []
    assert len(_imported(tmp_path)) == EAGER_IMPORT_LIMIT


def test_above_the_eager_limit_a_boefje_is_imported_when_a_task_asks_for_it(tmp_path):
    _counted_boefjes(tmp_path, EAGER_IMPORT_LIMIT + 1)
    registry = BoefjeRegistry.discover(tmp_path)

    assert registry.import_mode is ImportMode.ON_FIRST_USE
    assert registry.load_all() == []
    assert _imported(tmp_path) == []
    assert registry.find("b3").load()(META) == []
    assert _imported(tmp_path) == ["b3"]
    registry.load_all(ImportMode.AT_START)  # asked for explicitly: everything
    assert len(_imported(tmp_path)) == EAGER_IMPORT_LIMIT + 1


@pytest.mark.parametrize(
    ("count", "summary"),
    [
        (0, "Found 0 boefjes under {root} (0 broken): a task for a boefje that is not registered in code will fail"),
        (1, "Found 1 boefje under {root} (0 broken); each worker imports them at start"),
        (EAGER_IMPORT_LIMIT + 1, f"Found {EAGER_IMPORT_LIMIT + 1} boefjes under {{root}} (0 broken); more than "
                                 f"{EAGER_IMPORT_LIMIT}, so each is imported when a task first asks for it"),
    ],
)
def test_discovery_logs_the_folder_how_many_it_found_and_when_they_are_imported(tmp_path, caplog, count, summary):
    caplog.set_level(logging.DEBUG, logger="boefje_runtime.plugins")
    _counted_boefjes(tmp_path, count)

    registry = BoefjeRegistry.discover(tmp_path)

    assert registry.summary() == summary.format(root=tmp_path)
    [record] = [r for r in caplog.records if r.getMessage() == registry.summary()]
    # DEBUG: before imports the broken count can be low; worker mode logs the checked one at INFO.
    assert record.levelno == (logging.WARNING if count == 0 else logging.DEBUG)


def test_root_is_put_on_sys_path_once(tree):
    root = tree("openkat")
    registry = BoefjeRegistry.discover(root)

    registry.load_all()
    BoefjeRegistry.discover(root).load_all()

    assert sys.path.count(str(root)) == 1


def test_a_boefje_copied_into_the_working_directory_loads(tree, monkeypatch):
    """OpenKAT's images COPY the boefje folder into /app/boefje and run from there."""
    monkeypatch.chdir(tree("image"))

    registry = BoefjeRegistry.discover()

    nmap = registry.find("nmap-udp", oci_image="ghcr.io/example/nmap:latest")
    assert nmap.id == "nmap"
    assert nmap.load()({"arguments": {"oci_arguments": ["-sU"]}}) == [({"text/plain"}, "nmap -sU")]


def test_folders_that_are_not_python_identifiers_still_load(tree):
    registry = BoefjeRegistry.discover(tree("standalone"))

    assert registry.find("dashed").load()({}) == [({"text/plain"}, "DASHED")]  # with its relative import
    assert registry.find("spaced").load()({}) == [({"text/plain"}, "spaced")]


def test_a_tree_whose_package_name_is_taken_runs_its_own_code(tree):
    """Two trees both called ``boefjes``: the second must not get the first one's modules."""
    BoefjeRegistry.discover(tree("openkat")).load_all()
    assert "boefjes" in sys.modules

    registry = BoefjeRegistry.discover(tree("other_image"))

    assert registry.find("other").load()({}) == [({"text/plain"}, "other")]
    assert registry.errors == []


# --- what discovery skips --------------------------------------------------------------------------------------


def _write_boefje(folder: Path, boefje_id: str) -> None:
    write_plugin(folder, "def run(boefje_meta):\n    return []\n", id=boefje_id)


def test_skips_hidden_folders_caches_installed_packages_and_virtualenvs(tmp_path):
    _write_boefje(tmp_path / "plugins" / "kept", "kept")
    _write_boefje(tmp_path / ".git" / "hidden", "hidden")
    _write_boefje(tmp_path / "plugins" / "__pycache__" / "cached", "cached")
    _write_boefje(tmp_path / "web" / "node_modules" / "npm", "npm")
    _write_boefje(tmp_path / "venv" / "lib" / "site", "venv-boefje")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    # Installed packages outside a virtual environment (a system or --target install): no pyvenv.cfg.
    _write_boefje(tmp_path / "usr" / "lib" / "python3.11" / "site-packages" / "pkg", "site-boefje")
    _write_boefje(tmp_path / "usr" / "lib" / "python3" / "dist-packages" / "pkg", "dist-boefje")

    registry = BoefjeRegistry.discover(tmp_path)

    assert list(registry.boefjes) == ["kept"]


def test_the_plugin_folder_itself_is_searched_even_when_it_is_a_virtualenv(tmp_path):
    """The user named it: only folders below it are judged."""
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    _write_boefje(tmp_path / "kept", "kept")

    assert list(BoefjeRegistry.discover(tmp_path).boefjes) == ["kept"]


def test_discovery_reads_at_most_max_depth_folders_down(tmp_path):
    assert MAX_DEPTH == 6  # documented in README and SECURITY.md
    _write_boefje(tmp_path.joinpath(*"abcde", "at-limit"), "at-limit")  # 6 folders below the root
    _write_boefje(tmp_path.joinpath(*"abcdef", "too-deep"), "too-deep")  # 7
    _write_boefje(tmp_path, "root-itself")  # depth 0: PLUGIN_DIR may be the boefje's own folder

    assert sorted(BoefjeRegistry.discover(tmp_path).boefjes) == ["at-limit", "root-itself"]
    assert sorted(BoefjeRegistry.discover(tmp_path, max_depth=1).boefjes) == ["root-itself"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_out_of_the_plugin_folder_are_not_followed(tmp_path, caplog):
    root, outside = tmp_path / "plugins", tmp_path / "elsewhere"
    _write_boefje(root / "real", "real")
    _write_boefje(outside / "stranger", "stranger")
    (root / "link-out").symlink_to(outside, target_is_directory=True)
    (root / "link-in").symlink_to(root / "real", target_is_directory=True)  # inside: fine (found once)

    registry = BoefjeRegistry.discover(root)

    assert list(registry.boefjes) == ["real"]
    assert f"Not searching {root / 'link-out'} for boefjes: it links to {outside}" in caplog.text


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_are_followed_once(tmp_path):
    _write_boefje(tmp_path / "plugins" / "looped", "looped")
    (tmp_path / "plugins" / "looped" / "back").symlink_to(tmp_path / "plugins", target_is_directory=True)
    (tmp_path / "self").symlink_to(tmp_path, target_is_directory=True)

    registry = BoefjeRegistry.discover(tmp_path)

    assert list(registry.boefjes) == ["looped"]
    assert registry.errors == []  # the loop did not find the same boefje again as a duplicate


def test_a_missing_plugin_folder_is_a_warning_and_an_empty_registry(tmp_path, caplog):
    registry = BoefjeRegistry.discover(tmp_path / "missing")

    assert len(registry) == 0 and registry.errors == []
    assert f"Plugin folder {tmp_path / 'missing'} is not a directory" in caplog.text


# --- broken plugins --------------------------------------------------------------------------------------------


def test_broken_plugins_are_reported_and_never_hide_the_good_ones(tree, caplog):
    root = tree("broken")
    caplog.set_level(logging.WARNING, logger="boefje_runtime.plugins")

    registry = BoefjeRegistry.discover(root)

    assert sorted(registry.boefjes) == ["bad-signature", "dup", "exit-on-import", "good-a", "good-z",
                                        "import-error", "no-run", "run-not-callable"]  # not imported yet
    problems = {problem.path.name: problem.message for problem in registry.errors}
    assert set(problems) == {"brk_bad_json", "brk_no_id", "brk_not_object", "brk_no_main", "brk_dup_second"}
    assert problems["brk_bad_json"].startswith("cannot read boefje.json: ")
    assert problems["brk_no_id"] == 'boefje.json has no "id" (a non-empty string)'
    assert problems["brk_not_object"] == "boefje.json must hold a JSON object, got list"
    assert problems["brk_no_main"] == "no main.py next to boefje.json"
    assert problems["brk_dup_second"].startswith("duplicate boefje id 'dup', ignored: first found at ")
    assert len(caplog.records) == len(registry.errors)
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in caplog.records)

    problems_at_boot = registry.load_all()

    messages = {p.path.name: p.message for p in problems_at_boot}
    assert set(messages) == {"brk_no_run", "brk_run_not_callable", "brk_bad_signature", "brk_import_error",
                             "brk_exit_on_import"}
    assert messages["brk_no_run"] == "main.py defines no run(boefje_meta)"
    assert messages["brk_run_not_callable"] == "main.py: run must be callable, got int"
    assert messages["brk_bad_signature"] == "main.py: run(boefje_meta, extra) cannot be called with one argument " \
                                            "(boefje_meta)"
    assert messages["brk_import_error"] == ("cannot import brk_import_error.main: ModuleNotFoundError: "
                                            "No module named 'module_that_does_not_exist_anywhere'")
    assert messages["brk_exit_on_import"] == "cannot import brk_exit_on_import.main: SystemExit: refusing to load"
    assert registry.find("good-a").load()({}) == [({"text/plain"}, "a")]
    assert registry.find("good-z").load()({}) == [({"text/plain"}, "z")]


def test_duplicate_ids_first_one_in_name_order_wins(tree):
    registry = BoefjeRegistry.discover(tree("broken"))

    dup = registry.find("dup")

    assert (dup.name, dup.path.name) == ("First", "brk_dup_first")
    assert dup.load()({}) == [({"text/plain"}, "first")]


@pytest.mark.parametrize(
    ("boefje_id", "message"),
    [
        ("no-main", "no main.py next to boefje.json"),
        ("bad-json", "cannot read boefje.json"),  # its id is still recognised in the broken JSON
        ("no-run", "defines no run(boefje_meta)"),
        ("run-not-callable", "run must be callable, got int"),
        ("bad-signature", "cannot be called with one argument"),
        ("import-error", "No module named 'module_that_does_not_exist_anywhere'"),
        ("exit-on-import", "SystemExit: refusing to load"),
    ],
)
def test_looking_up_a_broken_plugin_raises_its_problem(tree, boefje_id, message):
    registry = BoefjeRegistry.discover(tree("broken"))
    registry.load_all()

    with pytest.raises(PluginError, match=f"boefje '{boefje_id}' at .* is broken: .*{re.escape(message)}"):
        registry.find(boefje_id)


def test_an_import_error_found_lazily_is_raised_again_without_reimporting(tree):
    registry = BoefjeRegistry.discover(tree("broken"))
    boefje = registry.find("import-error")  # found: nothing is imported at discovery

    with pytest.raises(PluginError, match="No module named") as first:
        boefje.load()
    with pytest.raises(PluginError, match="No module named") as second:
        boefje.load()

    assert isinstance(first.value.__cause__, ModuleNotFoundError)
    assert isinstance(second.value.__cause__, ModuleNotFoundError)
    assert len([p for p in registry.errors if p.path.name == "brk_import_error"]) == 1
    with pytest.raises(PluginError, match="No module named"):
        registry.find("import-error")


# --- lookup ----------------------------------------------------------------------------------------------------


def test_lookup_falls_back_to_the_package_built_for_the_tasks_image(tree):
    registry = BoefjeRegistry.discover(tree("openkat"))

    assert registry.find("alpha-deep", oci_image="ghcr.io/example/alpha:latest").id == "alpha"
    assert registry.find("beta", oci_image="ghcr.io/example/alpha:latest").id == "beta"  # the id comes first


def test_lookup_refuses_to_guess_between_packages_of_one_image(tree):
    registry = BoefjeRegistry.discover(tree("openkat"))

    with pytest.raises(BoefjeNotFound, match=r"2 boefjes have oci_image 'ghcr.io/example/shared:latest' "
                                             r"\(beta, counter\): cannot tell which one to run"):
        registry.find("gamma", oci_image="ghcr.io/example/shared:latest")


def test_an_unknown_boefje_says_what_the_image_has(tree):
    registry = BoefjeRegistry.discover(tree("openkat"))

    with pytest.raises(BoefjeNotFound) as raised:
        registry.find("nmap", oci_image="ghcr.io/example/nmap:latest")

    assert str(raised.value) == (
        "no boefje with id 'nmap' nor with oci_image 'ghcr.io/example/nmap:latest' in this image, "
        "which has 4 boefjes: alpha, beta, counter, env-reader"
    )
    assert isinstance(raised.value, BoefjeRuntimeError) and isinstance(raised.value, LookupError)


def test_an_unknown_boefje_mentions_skipped_broken_plugins(tree):
    registry = BoefjeRegistry.discover(tree("broken"))

    with pytest.raises(BoefjeNotFound, match=r"5 broken plugins were skipped"):
        registry.find("nothing-like-it")


def test_an_empty_registry_says_it_has_no_boefjes():
    with pytest.raises(BoefjeNotFound, match=r"no boefje with id 'x' in this image, which has 0 boefjes$"):
        BoefjeRegistry().find("x")


# --- registered callables --------------------------------------------------------------------------------------


def test_registered_callables_run_without_a_folder():
    registry = BoefjeRegistry()

    @registry.boefje("decorated", version="3", oci_image="ghcr.io/example/lib:1")
    def decorated(boefje_meta):
        return [({"text/plain"}, "decorated")]

    plain = registry.register("plain", lambda boefje_meta: [], name="Plain")

    assert isinstance(plain, Boefje) and plain.path is None and plain.name == "Plain"
    found = registry.find("decorated")
    assert (found.version, found.oci_image, found.path) == ("3", "ghcr.io/example/lib:1", None)
    assert found.load() is decorated
    assert registry.find("whatever", oci_image="ghcr.io/example/lib:1") is found
    assert [b.id for b in registry] == ["decorated", "plain"] and len(registry) == 2 and "plain" in registry


def test_a_registered_callable_wins_over_a_folder_with_the_same_id(tree):
    registry = BoefjeRegistry.discover(tree("broken"))

    def replacement(boefje_meta):
        return [({"text/plain"}, "replacement")]

    registry.register("good-a", replacement)
    registry.register("import-error", replacement)  # also over a broken folder

    assert registry.find("good-a").load() is replacement
    assert registry.find("import-error").load() is replacement


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (42, "boefje 'x': expected a callable, got int"),
        (lambda: [], r"boefje 'x': run\(\) cannot be called with one argument"),
        (lambda a, b: [], r"boefje 'x': run\(a, b\) cannot be called with one argument"),
        (lambda *, meta: [], r"boefje 'x': run\(\*, meta\) cannot be called with one argument"),
    ],
)
def test_registering_an_unusable_callable_fails_loudly(func, message):
    with pytest.raises(PluginError, match=message):
        BoefjeRegistry().register("x", func)


@pytest.mark.parametrize("func", [lambda meta, extra=None: [], lambda *args: [], print])
def test_callables_that_can_take_one_argument_are_accepted(func):
    assert BoefjeRegistry().register("x", func).load() is func


def test_plugin_problem_reads_as_path_and_message(tmp_path):
    assert str(PluginProblem(tmp_path, "broken")) == f"{tmp_path}: broken"
    assert str(PluginProblem(None, "broken")) == "broken"
