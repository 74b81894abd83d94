"""Prefect flows and the `prodassoc` CLI.

The project's loggers (``prodassoc.*``) log at INFO wherever a flow runs: Prefect's own logging
configuration leaves the root logger at WARNING, which would drop the lines that show the work
(counts, what was served, weights) from a deployed run's log in the Prefect UI.
"""

import logging

if logging.getLogger("prodassoc").level == logging.NOTSET:
    logging.getLogger("prodassoc").setLevel(logging.INFO)
