"""The learning tests again, the way a second machine would run them: two torch threads and a tiny base
model pretrained here from seed 1 (``test_learning.py`` runs them at one thread from the shipped base). A
file of its own, so that ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` runs the two passes on two
workers at once."""

from test_learning import *  # noqa: F403  (the tests and their fixtures)

PERTURBATION = (2, 1)
