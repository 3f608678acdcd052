from tests.integration.conftest import client, cluster, pipeline  # noqa: F401  (fixtures)
