"""parallel_map called directly (outside a task): real worker processes, and bad arguments refused."""

from __future__ import annotations

import threading

import pytest

from zmqruntime import parallel, parallel_map

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pool_reaped():
    yield
    with parallel._pool_lock:  # the spawn pool is kept between calls: end it with the test
        if parallel._pool is not None:
            parallel._pool.terminate()
            parallel._pool.join()
            parallel._pool = None


def test_ordered_results_from_real_processes(pool_reaped):
    offset = 10
    assert parallel_map(lambda x: x * x + offset, range(12), processes=2) == [x * x + 10 for x in range(12)]
    assert parallel_map(len, []) == []


def test_the_first_error_is_raised_with_its_type(pool_reaped):
    with pytest.raises(ZeroDivisionError):
        parallel_map(lambda x: 1 // (x - 3), range(6), processes=2)
    assert parallel_map(str, [1, 2], processes=2) == ["1", "2"]  # a fresh pool after the failure


@pytest.mark.parametrize("kwargs,error,words", [
    ({"fn": 42, "items": [1]}, TypeError, "needs a callable"),
    ({"fn": str, "items": [1], "desc": 5}, TypeError, "desc must be a string"),
    ({"fn": str, "items": [1], "processes": 0}, ValueError, "processes must be a positive int"),
    ({"fn": str, "items": [1], "processes": True}, ValueError, "processes must be a positive int"),
])
def test_bad_arguments_are_refused(kwargs, error, words):
    fn, items = kwargs.pop("fn"), kwargs.pop("items")
    with pytest.raises(error, match=words):
        parallel_map(fn, items, **kwargs)


def test_a_function_that_cannot_be_sent_is_named():
    lock = threading.Lock()

    def holds_a_lock(x):
        return lock

    with pytest.raises(TypeError, match="cannot send function .*holds_a_lock"):
        parallel_map(holds_a_lock, [1])
