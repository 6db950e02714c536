import os


def run(boefje_meta: dict) -> list[tuple[set, bytes | str]]:
    return [({"text/plain"}, os.getenv("API_KEY", "<unset>"))]
