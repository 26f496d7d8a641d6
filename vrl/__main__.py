"""``python -m vrl``: train (see ``vrl.train``)."""

from vrl.train import main

if __name__ == "__main__":
    main()
