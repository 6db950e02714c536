def execute(boefje_meta):
    return []
