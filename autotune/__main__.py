"""`python -m autotune`: the same CLI as the `autotune` command.

The guard matters: the measuring worker is a multiprocessing child started with "spawn", which
imports the parent's main module again (as __mp_main__); without the guard it would run the CLI."""

from autotune.cli import main

if __name__ == "__main__":
    main()
