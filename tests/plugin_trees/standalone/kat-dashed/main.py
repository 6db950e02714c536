from .util import shout


def run(boefje_meta):
    return [({"text/plain"}, shout("dashed"))]
