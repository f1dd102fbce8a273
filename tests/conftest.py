"""Root conftest: fixture plugins, one module per area so areas do not edit each other's files."""

pytest_plugins = [
    "tests.fixtures.kube",
    "tests.fixtures.postgres",
]
