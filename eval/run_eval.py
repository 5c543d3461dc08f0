"""Evaluate one HF model on a suite (one JSONL row per task, length, example and setting).

    python eval/run_eval.py runs/tiny_cpu/doc_ids/hf --suite eval/suites/tiny_cpu.yaml --strategy doc_ids \
        --out runs/tiny_cpu/doc_ids/eval/tiny_cpu

Same as ``lcr eval``. Rerunning it skips the rows already written, so a killed run resumes where it stopped.
"""

import argparse
import logging
import sys

from lcrecipes.eval import runner

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runner.add_arguments(parser)
    sys.exit(runner.main(parser.parse_args()))
