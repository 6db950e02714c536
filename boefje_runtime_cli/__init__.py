"""``boefje-worker``: the command line of boefje-runtime (the only package that imports click)."""
