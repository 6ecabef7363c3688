"""python -m uvc.report MODEL_TYPE_OR_FILE [--json] [--fvcore] [--plot OUT.png] [--latency [--threads N]]"""
import sys

from uvc.report.cli import main

sys.exit(main())
