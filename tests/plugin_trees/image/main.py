from nmap_args import build_args


def run(boefje_meta):
    return [({"text/plain"}, " ".join(build_args(boefje_meta)))]
