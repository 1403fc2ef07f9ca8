pytest_plugins = ["tests.serve_cluster"]
