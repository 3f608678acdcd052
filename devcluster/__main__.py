"""``python -m devcluster up | down | status | ping | kill NODE | jars | classpath | java | lock-jars``."""

import sys

from .cluster import main

sys.exit(main())
