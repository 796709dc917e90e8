"""hpcpilot-serve: the PanDA test double for hpcpilot, a distribution of its own (``serve/`` in the repository).

A local PanDA-compatible server for tests, benchmarks and trying the pilot on a laptop; it is not shipped
in the hpcpilot wheel, which holds no HTTP server.  ``server.PandaTestServer`` is the server object,
``cli`` the ``hpcpilot-serve`` command (also ``hpcpilot serve`` where this package is installed).

Nothing is imported here: the hpcpilot command line imports ``hpcpilot_serve.cli`` on every rank of every
pilot run to register ``serve``, and must not pay for the server (ssl, http.server) each time.
"""
