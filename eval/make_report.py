"""Write per-recipe and across-recipe reports (Markdown + PNG + JSON) from eval run dirs; never re-runs a model.

    python eval/make_report.py runs/tiny_cpu/*/eval/tiny_cpu --out reports/tiny_cpu \
        --baseline runs/tiny_cpu/base/eval/tiny_cpu

Same as ``lcr report``. Rerunning it rewrites the report from the rows present now.
"""

import argparse
import logging
import sys

from lcrecipes.eval import report

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    report.add_arguments(parser)
    sys.exit(report.main(parser.parse_args()))
