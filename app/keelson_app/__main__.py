"""``python3 -m keelson_app`` is the same as the ``keelson-app`` command."""

import sys

from keelson_app.cli import main

sys.exit(main())
