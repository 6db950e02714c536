def run(boefje_meta):
    return []
