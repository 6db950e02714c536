def run(boefje_meta: dict) -> list[tuple[set, bytes | str]]:
    return [({"application/json"}, b'{"beta": true}')]
