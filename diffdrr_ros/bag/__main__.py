"""``python -m diffdrr_ros.bag record|play|score ...`` (same as ``diffdrr-ros bag ...``)."""

import sys

from .cli import main

sys.exit(main(["bag", *sys.argv[1:]]))
