"""Speed and memory measurements. Run each as a module from the repository root, e.g.
``python -m bench.bench_networks`` (the root is then on ``sys.path``, as for the tests)."""
