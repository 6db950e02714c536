def run(boefje_meta: dict) -> list[tuple[set, bytes | str]]:
    return [({"text/plain"}, "other")]
