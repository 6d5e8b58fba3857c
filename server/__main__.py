"""``python -m rnnserve.server [flags]`` = ``rnnserve serve [flags]``."""

from rnnserve.server.commands import main

if __name__ == "__main__":
    main()
