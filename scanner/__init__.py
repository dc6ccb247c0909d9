"""mxscan: sweep mail domains, resolve their MX records and probe each mail host.

The package is laid out as the stages of a sweep: ``inputs`` and ``config`` read what
the user gives, ``dns`` resolves, ``smtp`` holds the protocol logic without I/O,
``probe`` talks to servers, ``results`` defines the records, ``output`` writes them,
``sweep`` runs the pipeline and ``cli`` is the command line. ``lab`` is a simulated
mail internet on loopback for the demo, the tests and the benchmarks.
"""

__version__ = "0.1.0"
