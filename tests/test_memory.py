"""run.memory: the estimate a command checks its sizes against before any work."""

import pytest

from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run import memory

TASK, MODEL = TaskConfig(d=4, n_context=10), ModelConfig(d=4, n_layers=3)


def test_a_refusal_names_the_largest_value_that_fits():
  need = lambda v: 100 * v
  memory.check("--batch-size", 10, 1, need, available=1000)  # exactly at the budget: accepted
  with pytest.raises(ValueError, match=r"--batch-size 11 needs .* allowed range with the other arguments as given: \[1, 10\]"):
    memory.check("--batch-size", 11, 1, need, available=1000)
  with pytest.raises(ValueError, match=r"\[1, 1\]"):
    memory.check("--batch-size", 2**31 - 1, 1, need, available=199)


def test_when_even_the_smallest_value_does_not_fit_the_refusal_says_so():
  with pytest.raises(ValueError, match="no value fits with the other arguments as given"):
    memory.check("--eval-tasks", 5, 2, lambda v: 10**6 + v, available=10**6)


def test_the_estimates_grow_linearly_in_the_batch_and_the_tasks():
  for need in (lambda b: memory.train_bytes(TASK, MODEL, b, 4), lambda n: memory.eval_bytes(TASK, MODEL, n, 8)):
    assert need(2) - need(1) == need(3) - need(2) > 0
    assert need(0) > 0  # the parameters' share, with no task at all
  assert memory.eval_bytes(TASK, MODEL, 7, 8) > memory.eval_bytes(TASK, MODEL, 7, 4)  # float64 costs more


def test_the_budget_is_a_positive_number_of_bytes():
  assert memory.budget() > 0
