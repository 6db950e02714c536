def run(boefje_meta, extra):
    return []
