"""``python -m zmqruntime.execution`` starts a worker (the server does this).

A separate entry point, so ``worker.py`` is not both imported by the package
and run as ``__main__`` (runpy warns about that).
"""

from .worker import main

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports the main module (parallel_map)
    main()
