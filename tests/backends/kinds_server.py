"""A server class that brings its own task kinds (tests/test_early_worker.py).

Its workers load one more kind than ``zmqruntime serve`` can know of before
it imports the class: the worker the CLI started early does not fit it.
"""

from traitlets import Dict, Unicode

from zmqruntime.execution.server import ExecutionServer


class KindsServer(ExecutionServer):
    task_kind_classes = Dict(Unicode(), default_value={"source": "zmqruntime.execution.kinds:PythonSource"}).tag(
        config=True)
