"""Leaves a line in imports.log each time this module is executed, so tests can count imports."""

from pathlib import Path

with Path(__file__).with_name("imports.log").open("a") as log:
    log.write("imported\n")

calls = 0


def run(boefje_meta: dict) -> list[tuple[set, bytes | str]]:
    global calls
    calls += 1
    return [({"text/plain"}, str(calls))]
