from tests.integration.conftest import client, cluster, pipeline, raw_producer  # noqa: F401  (fixtures)
