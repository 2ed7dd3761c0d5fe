"""``python -m mechunlearn`` runs the command line (same as the ``mechunlearn`` script)."""

from mechunlearn.cli import main

if __name__ == "__main__":
    main()
