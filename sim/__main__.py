"""``python -m moesim.sim``: the Hydra app (see :mod:`sim.app`)."""

from moesim.sim.app import main

if __name__ == "__main__":
    main()
