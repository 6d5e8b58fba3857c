"""``python -m rnnserve.server [flags]`` = ``rnnserve serve [flags]``."""

import typer
from rnnserve.server.commands import serve_command

if __name__ == "__main__":
    typer.run(serve_command)
