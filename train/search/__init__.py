"""``rnnserve search``: an Optuna search per cell (LSTM, GRU) and a report comparing the winners.

Modules, each importing only those below it (all at module level, except that ``command``
imports ``study`` when a search runs, so the CLI starts without Optuna or torch):

    command   the typer command (what ``rnnserve search`` parses and prints)
    study     run_search: the Optuna studies, trials interleaved, resumable; then the report
    trial     one trial: the shared prepared data, sampled sizes, one training run
    collect   the results dict of a finished search (stored trials + fresh measurements)
    measure   accuracy, latency, training speed and memory of models
    sizes     exact parameter counts from sizes (no torch)
    verdicts  conclusions and claim verdicts computed from the results, number formats
    settings  SearchConfig, search-space presets, the layout of the search directory

The report itself (markdown, plots, results.json) is ``rnnserve.train.report``, which
``study`` calls and which uses ``verdicts``.
"""

from rnnserve.train.search.command import search_command

__all__ = ["search_command"]
