"""The dev cluster's errors: one root, each a problem the user can fix, reported as one line (``error: ...``, exit 2)."""


class DevClusterError(Exception):
    """Something the local cluster's tooling could not do; its message is the whole report."""


class ClusterError(DevClusterError):
    """The nodes: a port taken, a node that does not start, a bad KAFKA_SECURITY."""


class JavaError(DevClusterError):
    """No Java to run the nodes."""


class JarsError(DevClusterError):
    """The jars could not be listed or fetched."""


class SecuritySetupError(DevClusterError):
    """The secured cluster's certificates or users could not be made."""
