"""``python -m devcluster up | down | status | ping | kill NODE | jars | classpath``."""

import sys

from .cluster import main

sys.exit(main())
