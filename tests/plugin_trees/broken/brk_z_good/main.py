def run(boefje_meta):
    return [({"text/plain"}, "z")]
