"""Developer tooling, apart from the runtime: a local Apache Kafka cluster on the JVM, its security, the demo.

    cluster    three KRaft nodes from Maven Central's jars: up, down, status, ping, kill (``python -m devcluster``)
    security   the secured cluster's CA, certificates, SCRAM users, ACLs per role and client files
    demo       the four scripts together (``make demo``)

Nothing in ``fraud_pipeline`` imports this package: a deployment points the
scripts at its own cluster.
"""
