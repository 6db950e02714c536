from boefjes.plugins.kat_alpha.helpers import greet


def run(boefje_meta: dict) -> list[tuple[set, bytes | str]]:
    return [({"text/plain"}, greet(boefje_meta["input_ooi"]))]
