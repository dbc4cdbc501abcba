"""``python -m sim``: the Hydra app (see :mod:`sim.app`)."""

from sim.app import main

if __name__ == "__main__":
    main()
