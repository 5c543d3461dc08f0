"""Evaluation: tasks (one loader per benchmark format), KV compression methods, the RAG baseline, a resumable
runner writing one JSONL row per (task, length, example, setting), reports, and the attention analysis.

    from lcrecipes.eval.runner import run_eval
    from lcrecipes.eval.report import write_report

Submodules are imported where used, so importing one part (e.g. ``lcrecipes.eval.compression``) stays light.
"""
