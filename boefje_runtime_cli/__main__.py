"""``python -m boefje_runtime_cli``: the same command as ``boefje-worker``."""

from .main import main

if __name__ == "__main__":
    main()
